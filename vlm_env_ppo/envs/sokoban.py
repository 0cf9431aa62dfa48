"""Sokoban as the 2025-26 VLM-agent papers play it (verl-agent, VAGEN, RAGEN, ROLL), with each system's published
settings selectable by name (``rules=``)."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from .presets import resolve_rules
from .sokoban_levels import DIRECTION_NAMES, Level, generate_level, grid_text, move, solve


@dataclass(frozen=True)
class SokobanRules:
    """One system's Sokoban settings: the room, the generator's depth, the step cap and the reward.

    ``reward`` is ``"native"`` (DeepMind's and gym-sokoban's: ``step_penalty`` per move, +1 for a box pushed onto a
    target, −1 for one pushed off, +10 when all boxes are on targets) or ``"success"`` (1 when solved, else 0).
    ``source`` says where each value was read, and what could not be verified."""

    dim_room: tuple[int, int] = (6, 6)
    num_boxes: int = 1
    search_depth: int = 30
    max_steps: int = 15
    reward: str = "native"
    step_penalty: float = -0.1
    source: str = ""


# The published settings. Trainer-side settings of the same systems (format / invalid-output penalties, history,
# turns) are `VLMPPOConfig` fields, set in the example configs `examples/configs/sokoban_*.yaml`.
RULES: dict[str, SokobanRules] = {
    "verl-agent": SokobanRules(
        max_steps=15,
        source="verl-agent (github langfengQ/verl-agent; read in its fork vanzll/verl-agent): "
        "verl/trainer/config/ppo_trainer.yaml env.sokoban (dim_room [6, 6], num_boxes 1, search_depth 30) and "
        "examples/grpo_trainer/run_sokoban.sh (env.max_steps=15, invalid_action_penalty_coef=0.1); the env's own "
        "reward (agent_system/environments/env_manager.py passes it through unchanged).",
    ),
    "native": SokobanRules(
        max_steps=120,
        source="gym-sokoban (github mpSchrader/gym-sokoban), DeepMind's rules: -0.1 per step, +1 / -1 for a box "
        "onto / off a target, +10 when solved, 120 steps (the step cap as jumanji's docs of the same rules state; "
        "gym-sokoban's own default was not read here). Room, boxes and depth: this package's 6x6 / 1 / 30.",
    ),
    "vagen": SokobanRules(
        max_steps=100,
        source="VAGEN (github RAGEN-AI/vagen): vagen/env/sokoban/env_config.py (dim_room (6, 6), num_boxes 1, "
        "max_steps 100, max_actions_per_step 3, format_reward 0.5) and vagen/env/sokoban/prompt.py (-0.1 per move, "
        "+1 box on target, +10 all placed). Its search depth and its training YAML's turn cap were not verified "
        "here: the depth is the common 30.",
    ),
    "ragen": SokobanRules(
        max_steps=10,
        source="RAGEN (github RAGEN-AI/RAGEN): config/envs.yaml SimpleSokoban (dim_x 6, dim_y 6, num_boxes 1, "
        "max_steps 100, max_actions_per_traj 10: the 10 actions per trajectory are the cap here; search_depth 30 as "
        "its SokobanDifferentGridVocab entry). Its actions per turn (config/base.yaml) were not verified here.",
    ),
    "success-only": SokobanRules(
        max_steps=15,
        reward="success",
        source="verl-agent's room and step cap with a sparse reward: 1 when solved, 0 otherwise (the success-only "
        "reward of outcome-reward RL, e.g. a GRPO group's episode score).",
    ),
}

# Colours of the frame: each cell kind is distinct (tests check it).
WALL, FLOOR = (110, 70, 40), (30, 30, 30)
TARGET, BOX, BOX_ON_TARGET, PLAYER = (220, 40, 40), (230, 180, 40), (60, 200, 80), (60, 140, 255)


def draw_level(level: Level, tile_size: int) -> np.ndarray:
    """The level as an RGB frame, ``tile_size`` pixels per cell: walls brown, floor dark grey, a target a red ring,
    a box a yellow square (green on a target), the player a blue disc (with the red ring under it on a target)."""
    rows, cols = level.walls.shape
    image = Image.new("RGB", (cols * tile_size, rows * tile_size), FLOOR)
    draw = ImageDraw.Draw(image)
    t, m = tile_size, max(1, tile_size // 8)
    targets, boxes = set(level.targets), set(level.boxes)
    for r in range(rows):
        for c in range(cols):
            x, y = c * t, r * t
            if level.walls[r, c]:
                draw.rectangle([x, y, x + t - 1, y + t - 1], fill=WALL)
                continue
            if (r, c) in targets:
                draw.rectangle([x + m, y + m, x + t - 1 - m, y + t - 1 - m], outline=TARGET, width=max(1, t // 6))
            if (r, c) in boxes:
                colour = BOX_ON_TARGET if (r, c) in targets else BOX
                draw.rectangle([x + 2 * m, y + 2 * m, x + t - 1 - 2 * m, y + t - 1 - 2 * m], fill=colour)
            elif (r, c) == level.player:
                draw.ellipse([x + 2 * m, y + 2 * m, x + t - 1 - 2 * m, y + t - 1 - 2 * m], fill=PLAYER)
    return np.asarray(image, dtype=np.uint8)


class SokobanEnv(gym.Env):
    """
    ## Description
    Push every box onto a target. A random room is generated at every reset by the standard method (a random-walk
    room, then reverse play from the solved state, keeping the hardest start within ``search_depth`` reverse moves;
    `vlm_env_ppo.envs.sokoban_levels`), so every level is solvable. The defaults are the setting of verl-agent's
    Sokoban results (GiGPO, Feng et al. 2025: 6x6, one box, depth 30, 15 steps); ``rules=`` selects another
    system's (`RULES`, each citing the config file it was read from).

    ## Action Space
    `Discrete(4)`: 0 ``up``, 1 ``down``, 2 ``left``, 3 ``right``. Moving into a box pushes it if the cell behind it is
    free; a move into a wall or a blocked box leaves everything in place (and still costs a step).

    ## Observation Space
    `Box(0, 255, (rows * tile_size, cols * tile_size, 3), uint8)`: 96x96 by default. Walls brown, floor dark grey,
    targets red rings, boxes yellow (green on a target), the player a blue disc.

    ## Rewards
    ``"native"`` rules: −0.1 per step, +1 for a box pushed onto a target, −1 for one pushed off, +10 when the last box
    lands. ``"success-only"``: 1 when solved, 0 otherwise.

    ## Episode End
    Terminates when every box is on a target (``info["is_success"]``); truncated after ``max_steps`` steps.

    ## Information
    ``info["grid_text"]``: the room as the text-only systems print it (``#`` wall, ``_`` floor, ``O`` target,
    ``X`` box, ``√`` box on target, ``P`` player, ``S`` player on target), so text-only models can play;
    ``info["boxes_on_target"]``, ``info["num_boxes"]``, ``info["steps"]``, ``info["is_success"]``.

    ## Arguments
    - ``rules`` (default ``"verl-agent"``): a name in `RULES` (``"verl-agent"``, ``"native"``, ``"vagen"``,
      ``"ragen"``, ``"success-only"``) or a `SokobanRules`.
    - ``dim_room``, ``num_boxes``, ``search_depth``, ``max_steps``: override the rules' values.
    - ``tile_size`` (default 16, gym-sokoban's rgb_array tiles): pixels per cell.
    - ``min_solution_length`` (default 1): redraw levels whose shortest solution is shorter (VAGEN's configs carry a
      ``min_actions_to_succeed``; whether it means this was not verified).
    - ``render_mode``: only ``"rgb_array"``.

    ``reset(options={"level": Level})`` starts from a given level (`sokoban_levels.parse_grid` builds one from text).

    ## Version History
    - v0: the standard generator and DeepMind's rules, seeded through ``np_random`` only.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    ACTION_NAMES = DIRECTION_NAMES

    def __init__(
        self, rules: str | SokobanRules = "verl-agent", dim_room: tuple[int, int] | None = None,
        num_boxes: int | None = None, search_depth: int | None = None, max_steps: int | None = None,
        tile_size: int = 16, min_solution_length: int = 1, render_mode: str | None = "rgb_array",
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Unsupported render_mode {render_mode!r}; the only render mode is 'rgb_array'.")
        self.rules = rules = resolve_rules(rules, RULES, "Sokoban", SokobanRules)
        self.dim_room = tuple(int(d) for d in (dim_room if dim_room is not None else rules.dim_room))
        self.num_boxes = int(num_boxes if num_boxes is not None else rules.num_boxes)
        self.search_depth = int(search_depth if search_depth is not None else rules.search_depth)
        self.max_steps = int(max_steps if max_steps is not None else rules.max_steps)
        if len(self.dim_room) != 2 or min(self.dim_room) < 3 or sum(self.dim_room) < 7:
            raise ValueError(f"`dim_room` must be (rows, cols), walls included, at least 3x4, got {dim_room}.")
        if self.num_boxes < 1 or self.search_depth < 1 or self.max_steps < 1 or int(tile_size) < 2:
            raise ValueError(
                f"`num_boxes`, `search_depth`, `max_steps` must be >= 1 and `tile_size` >= 2, got {self.num_boxes}, "
                f"{self.search_depth}, {self.max_steps}, {tile_size}."
            )
        if rules.reward not in ("native", "success"):
            raise ValueError(f"SokobanRules.reward must be 'native' or 'success', got {rules.reward!r}.")
        if int(min_solution_length) < 1:
            raise ValueError(f"`min_solution_length` must be >= 1, got {min_solution_length}.")
        self.min_solution_length = int(min_solution_length)
        self.tile_size = int(tile_size)
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(4)
        rows, cols = self.dim_room
        self.observation_space = spaces.Box(0, 255, (rows * self.tile_size, cols * self.tile_size, 3), np.uint8)
        self.level: Level | None = None
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        level = (options or {}).get("level")
        if level is not None:
            if not isinstance(level, Level) or level.walls.shape != self.dim_room:
                raise ValueError(f"`options['level']` must be a Level of shape {self.dim_room}, got {level!r}.")
            self.level = level
        else:
            self.level = self._generate()
        self._steps = 0
        return self.render(), self._info()

    def _generate(self, max_tries: int = 1000) -> Level:
        """A generated level whose shortest solution takes at least ``min_solution_length`` moves."""
        for _ in range(max_tries):
            level = generate_level(self.np_random, self.dim_room, self.num_boxes, self.search_depth)
            if self.min_solution_length <= 1 or len(solve(level) or ()) >= self.min_solution_length:
                return level
        raise RuntimeError(
            f"No level of {max_tries} generated needs {self.min_solution_length} moves in a {self.dim_room} room: "
            "lower `min_solution_length` or use a larger room."
        )

    def step(self, action):
        if self.level is None:
            raise RuntimeError("Call reset() before step().")
        if not self.action_space.contains(action):
            raise ValueError(f"Invalid action {action!r}; expected 0-3 ({', '.join(self.ACTION_NAMES)}).")
        self._steps += 1
        self.level, on, off = move(self.level, int(action))
        solved = self.level.solved
        if self.rules.reward == "success":
            reward = float(solved)
        else:
            reward = self.rules.step_penalty + on - off + (10.0 if solved else 0.0)
        truncated = not solved and self._steps >= self.max_steps
        info = self._info()
        return self.render(), float(reward), solved, truncated, info

    def _info(self) -> dict:
        targets = set(self.level.targets)
        return {
            "grid_text": grid_text(self.level),
            "boxes_on_target": sum(b in targets for b in self.level.boxes),
            "num_boxes": len(self.level.boxes),
            "steps": self._steps,
            "is_success": self.level.solved,
        }

    def render(self):
        """The current frame (H×W×3 uint8)."""
        if self.level is None:
            return np.zeros(self.observation_space.shape, np.uint8)
        return draw_level(self.level, self.tile_size)


class SokobanProbeEnv(SokobanEnv):
    """
    ## Description
    The learning probe of Sokoban for tiny models (`vlm_env_ppo.probes`): a one-row corridor, ``#OXP#`` or ``#PXO#``
    (the standard generator in a 3x5 room makes exactly these two levels), one push to solve, one step to do it.
    The direction of the push is only in the frame: where the player stands relative to the box. A tiny vision tower
    learns it (90% after about 32 PPO updates; `benchmarks/learning.py`), where the multi-push levels of wider rooms
    stayed near what a policy blind to the room gets (0.6-0.7 after 40 updates). ``show_level=False`` draws the empty
    corridor instead, the control that must fail: the same task with nothing to see.

    ## Action Space
    `Discrete(4)`: 0 ``up``, 1 ``down``, 2 ``left``, 3 ``right``; ``up``, ``down`` and the move into the end wall do
    nothing.

    ## Observation Space
    `Box(0, 255, (48, 80, 3), uint8)`: the room at 16 pixels per cell (walls, floor, box, target, player as in
    `SokobanEnv`).

    ## Rewards
    The native rules: +10.9 for the push (−0.1 step, +1 box on target, +10 solved), −0.1 otherwise.

    ## Episode End
    Terminates after one step, the one move of the game (``info["is_success"]``: solved). Uniformly random play succeeds 1/4 of the time; the best policy
    blind to the room (always ``left``, or always ``right``) 1/2; the optimum is 1.

    ## Arguments
    ``show_level`` (default True): False draws the corridor without player, box and target (the control).
    ``render_mode``: only ``"rgb_array"``.

    ## Version History
    - v0: initial version.
    """

    def __init__(self, show_level: bool = True, render_mode: str | None = "rgb_array"):
        super().__init__(dim_room=(3, 5), max_steps=1, render_mode=render_mode)
        self.show_level = bool(show_level)

    def step(self, action):
        frame, reward, _, _, info = super().step(action)
        return frame, reward, True, False, info  # one move per episode: the game ends, it is not cut short

    def render(self):
        if self.level is None or self.show_level:
            return super().render()
        empty = Level(self.level.walls, (), (), (-1, -1))  # walls and floor only
        return draw_level(empty, self.tile_size)
