"""Multi-step probe tasks: each isolates one thing PPO must get right over several steps of an episode.

`ColorChoiceEnv` (`vlm_env_ppo.envs.probe`) checks that PPO can learn at all; it has one step, so GAE, bootstrapping,
done masks, per-step rewards, history prompts and truncation never matter to it. These envs make each of those
decisive in turn:

- `DelayedCreditEnv`: the reward for the first action arrives ``delay`` steps later (credit assignment through GAE);
- `TrapEnv`: a small reward now or a larger one later (discounting and bootstrapping);
- `MemoryEnv`: the cue is only on the first frame, the decisive action comes later (``history_length``);
- `GridNavEnv`: a few moves through a 2×2 grid, sparse reward at the goal, a time limit (truncation bootstrapping).

They are easy to *see* and hard in their *decision* structure, because a tiny VLM trained from scratch on a CPU can
tell whole-frame colours apart within a few hundred episodes but cannot yet locate a small marker in a frame (a
one-step probe asking which half of a 4×4 grid holds a white cell stayed at chance after 1280 episodes). So every
state a decision depends on has its own frame colour. Chance levels and optima are in each docstring and checked by
``tests/test_probes.py``; `vlm_env_ppo.probes.PROBE_SETTINGS` holds the training settings the learning tests use.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .probe import COLORS

GREY = (128, 128, 128)
CUE_NAMES = tuple(COLORS)  # ("red", "blue"): the cue colours, and the actions that name them


class _ColourFrameEnv(gym.Env):
    """Shared plumbing: ``size``×``size`` RGB frames filled with a colour plus a little noise (so no two frames are
    identical and a policy cannot key on exact pixels), ``render_mode="rgb_array"`` only."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    ACTION_NAMES: tuple[str, ...] = ()

    def __init__(self, size: int, render_mode: str | None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"{type(self).__name__} renders only 'rgb_array' frames, got render_mode={render_mode!r}.")
        if size < 8:
            raise ValueError(f"`size` must be >= 8 pixels (the smallest picture the trainer accepts), got {size}.")
        self.size = size
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(len(self.ACTION_NAMES))
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self._frame = np.zeros((size, size, 3), np.uint8)

    def _fill(self, rgb) -> np.ndarray:
        noise = self.np_random.integers(-20, 21, size=(self.size, self.size, 3))
        return np.clip(np.asarray(rgb, dtype=np.int16) + noise, 0, 255).astype(np.uint8)

    def _show(self, frame: np.ndarray) -> np.ndarray:
        self._frame = frame
        return frame.copy()

    def render(self):
        return self._frame.copy()


class DelayedCreditEnv(_ColourFrameEnv):
    """
    ## Description
    The first frame is filled with a cue colour, red or blue, chosen uniformly at random; the agent should name it
    there. The reward for that answer arrives only ``delay`` steps later: the steps in between show a neutral grey
    frame, take any action and pay 0. Only a learner that carries reward back through time (GAE with ``gamma > 0``)
    learns the first answer; with ``gamma = 0`` the first step never sees a reward and stays at chance.

    ## Action Space
    `Discrete(2)`: 0 `red`, 1 `blue`. Only the first step's action matters.

    ## Observation Space
    `Box(0, 255, (size, size, 3), uint8)`: the cue colour on the first frame, grey afterwards, with pixel noise.

    ## Rewards
    +1 on the last step when the first action named the cue colour, 0 on every other step and otherwise.

    ## Episode End
    Terminates after ``delay + 1`` steps; `info["is_success"]` says whether the first action was right.
    Chance (uniformly random play) and the best always-same-action policy both succeed 1/2 of the time; the
    optimum is 1.

    ## Arguments
    `delay` (default 2): steps between the decisive action and its reward (>= 1). `size` (default 64): frame side in
    pixels. `render_mode`: only `"rgb_array"`.

    ## Version History
    - v0: initial version.
    """

    ACTION_NAMES = CUE_NAMES

    def __init__(self, delay: int = 2, size: int = 64, render_mode: str | None = "rgb_array"):
        if delay < 1:
            raise ValueError(f"`delay` must be >= 1 (0 would be ColorChoice-v0), got {delay}.")
        super().__init__(size, render_mode)
        self.delay = delay
        self._cue, self._t, self._right = 0, 0, False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cue, self._t, self._right = int(self.np_random.integers(len(CUE_NAMES))), 0, False
        return self._show(self._fill(COLORS[CUE_NAMES[self._cue]])), {}

    def step(self, action):
        if self._t == 0:
            self._right = int(action) == self._cue
        self._t += 1
        done = self._t > self.delay
        reward = float(done and self._right)
        info = {"is_success": self._right} if done else {}
        return self._show(self._fill(GREY)), reward, done, False, info


class TrapEnv(_ColourFrameEnv):
    """
    ## Description
    A corridor of ``length`` cells. At every cell the agent either takes the small prize behind the door on its left
    (`left`: ``small_reward`` at once, the episode ends) or walks on to the right (`right`: 0 now); walking off the last
    cell wins the large prize, 1. With the default `gamma = 0.9` the large prize is worth ``0.9 ** (length - 1) = 0.81``
    from the first cell, more than the small one: the trap catches a myopic learner (`gamma = 0`) or a broken bootstrap,
    which take the small prize. Each cell has its own shade of grey, so a critic can tell how far the agent got.

    ## Action Space
    `Discrete(2)`: 0 `left` (take the small prize), 1 `right` (walk on).

    ## Observation Space
    `Box(0, 255, (size, size, 3), uint8)`: the whole frame in the current cell's shade of grey, with pixel noise.

    ## Rewards
    ``small_reward`` (default 0.5) for `left`; 1 for `right` on the last cell; 0 otherwise.

    ## Episode End
    Terminates on `left`, or on `right` at the last cell; at most ``length`` steps. `info["is_success"]` is true
    when the large prize was won, `info["small_prize"]` when the small one was taken. Uniformly random play succeeds
    ``0.5 ** length`` (1/8 for the default); always `right` is optimal (success 1), always `left` takes the small
    prize every time. The trap is in the discounting, not in perception.

    ## Arguments
    `length` (default 3): corridor cells (>= 2). `small_reward` (default 0.5): in (0, 1). `size` (default 64): frame
    side in pixels. `render_mode`: only `"rgb_array"`.

    ## Version History
    - v0: initial version.
    """

    ACTION_NAMES = ("left", "right")

    def __init__(
        self, length: int = 3, small_reward: float = 0.5, size: int = 64, render_mode: str | None = "rgb_array"
    ):
        if length < 2:
            raise ValueError(f"`length` must be >= 2 so that the large prize is delayed, got {length}.")
        if not 0.0 < small_reward < 1.0:
            raise ValueError(f"`small_reward` must be in (0, 1), below the large prize, got {small_reward}.")
        super().__init__(size, render_mode)
        self.length, self.small_reward = length, small_reward
        self._cell = 0

    def _cell_frame(self) -> np.ndarray:
        shade = 60 + int(140 * self._cell / (self.length - 1))  # dark at the start, light near the large prize
        return self._show(self._fill((shade, shade, shade)))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cell = 0
        return self._cell_frame(), {}

    def step(self, action):
        if int(action) == 0:
            return self._cell_frame(), self.small_reward, True, False, {"is_success": False, "small_prize": True}
        self._cell += 1
        if self._cell == self.length:
            self._cell -= 1  # the frame after the win: the last cell again
            return self._cell_frame(), 1.0, True, False, {"is_success": True, "small_prize": False}
        return self._cell_frame(), 0.0, False, False, {}


class MemoryEnv(_ColourFrameEnv):
    """
    ## Description
    The first frame is filled with a cue colour, red or blue, chosen uniformly at random; the next ``delay`` frames
    are neutral grey. Only the answer on the last of them counts: it must name the cue. The cue is no longer on
    screen then, so a policy that sees only the current frame is at chance; with ``history_length >= delay`` the
    first frame is still in the prompt and the task is as easy as ColorChoice-v0. Actions before the last step do
    nothing.

    ## Action Space
    `Discrete(2)`: 0 `red`, 1 `blue`. Only the last step's action matters.

    ## Observation Space
    `Box(0, 255, (size, size, 3), uint8)`: the cue colour on the first frame, grey afterwards, with pixel noise.

    ## Rewards
    +1 on the last step when its action names the cue colour, 0 otherwise.

    ## Episode End
    Terminates after ``delay + 1`` steps; `info["is_success"]` says whether the last action was right. Chance
    (uniformly random play) and the best always-same-action policy both succeed 1/2 of the time; so does any
    policy without memory. The optimum is 1.

    ## Arguments
    `delay` (default 1): grey steps after the cue, the last of which is the decisive one (>= 1). `size` (default 64):
    frame side in pixels. `render_mode`: only `"rgb_array"`.

    ## Version History
    - v0: initial version.
    """

    ACTION_NAMES = CUE_NAMES

    def __init__(self, delay: int = 1, size: int = 64, render_mode: str | None = "rgb_array"):
        if delay < 1:
            raise ValueError(f"`delay` must be >= 1 (0 would show the cue at the decisive step), got {delay}.")
        super().__init__(size, render_mode)
        self.delay = delay
        self._cue, self._t = 0, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(len(CUE_NAMES))), 0
        return self._show(self._fill(COLORS[CUE_NAMES[self._cue]])), {}

    def step(self, action):
        decisive = self._t == self.delay
        self._t += 1
        if not decisive:
            return self._show(self._fill(GREY)), 0.0, False, False, {}
        right = int(action) == self._cue
        return self._show(self._fill(GREY)), float(right), True, False, {"is_success": right}


# GridNav's 2×2 grid, (row, column) cells. A wall separates the start (top left) from the goal below it, so the way
# round takes three moves in three different directions: right, down, left.
_START, _GOAL = (0, 0), (1, 0)
_WALLS = {((0, 0), (1, 0)), ((1, 0), (0, 0))}
_CELL_COLORS = {(0, 0): COLORS["red"], (0, 1): COLORS["blue"], (1, 1): (220, 200, 40), (1, 0): (40, 200, 60)}
_MOVES = {0: (0, -1), 1: (0, 1), 2: (1, 0)}  # left, right, down
DARK = (30, 30, 30)


class GridNavEnv(_ColourFrameEnv):
    """
    ## Description
    A 2×2 grid seen from above. The agent starts in the top-left cell; the goal is the cell below it, but a wall
    separates them, so the way takes three moves: `right`, `down`, `left`. Each cell has its own colour (top left red,
    top right blue, bottom right yellow, goal green), drawn on the agent's cell only; the others are dark. So the
    right move depends on the state and every state is a colour the tiny vision tower can tell apart. The reward is
    sparse (only on reaching the goal), and the episode is cut by a time limit of ``max_steps``: a learner must carry
    the goal's reward back three steps (``gamma = 0`` learns only the last move) and bootstrap, not zero, the value
    of the states where the time limit cut the episode.

    Cells are quadrants: with the 64-pixel default each is 32×32, one LLaVA-NeXT crop of the tiny models
    (`vlm_env_ppo.models.tiny`: 32-pixel image size, 8-pixel patches), and a 2×2 block of patches in its 32-pixel
    global view.

    ## Action Space
    `Discrete(3)`: 0 `left`, 1 `right`, 2 `down`. A move into the outer edge or the wall leaves the agent in place.

    ## Observation Space
    `Box(0, 255, (size, size, 3), uint8)`: the agent's cell in its colour, the other cells dark, with pixel noise.

    ## Rewards
    +1 on entering the goal, 0 otherwise.

    ## Episode End
    Terminates on reaching the goal (`info["is_success"]` true); truncated after ``max_steps`` steps otherwise
    (`info["is_success"]` false). With the default ``max_steps=5``: uniformly random play succeeds 14/81 ≈ 0.173 of the
    time; every always-same-action policy succeeds 0 times (each gets stuck at an edge or the wall); the
    optimum is 1 in 3 steps.

    ## Arguments
    `max_steps` (default 5): time limit (>= 3, the shortest way). `size` (default 64): frame side in pixels, even.
    `render_mode`: only `"rgb_array"`.

    ## Version History
    - v0: initial version.
    """

    ACTION_NAMES = ("left", "right", "down")

    def __init__(self, max_steps: int = 5, size: int = 64, render_mode: str | None = "rgb_array"):
        if max_steps < 3:
            raise ValueError(f"`max_steps` must be >= 3, the length of the shortest way to the goal, got {max_steps}.")
        if size % 2:
            raise ValueError(f"`size` must be even so the 2×2 cells are equal, got {size}.")
        super().__init__(size, render_mode)
        self.max_steps = max_steps
        self._cell, self._t = _START, 0

    def _cell_frame(self) -> np.ndarray:
        frame = self._fill(DARK)
        half = self.size // 2
        row, col = self._cell
        patch = frame[row * half : (row + 1) * half, col * half : (col + 1) * half]
        # the agent's cell: its colour plus the same noise the dark cells got
        patch[:] = np.clip(patch.astype(np.int16) - DARK[0] + np.array(_CELL_COLORS[self._cell]), 0, 255)
        return self._show(frame)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cell, self._t = _START, 0
        return self._cell_frame(), {}

    @staticmethod
    def move(cell: tuple[int, int], action: int) -> tuple[int, int]:
        """The cell after ``action`` from ``cell`` (the same cell when an edge or the wall is in the way)."""
        dr, dc = _MOVES[int(action)]
        new = (cell[0] + dr, cell[1] + dc)
        if not (0 <= new[0] < 2 and 0 <= new[1] < 2) or (cell, new) in _WALLS:
            return cell
        return new

    def step(self, action):
        self._cell = self.move(self._cell, action)
        self._t += 1
        success = self._cell == _GOAL
        truncated = not success and self._t >= self.max_steps
        info = {"is_success": success} if success or truncated else {}
        return self._cell_frame(), float(success), success, truncated, info
