"""FrozenLake as the VLM-agent systems play it: gymnasium's ``FrozenLake-v1`` dynamics on a new random map at every
reset, with the published map and slipperiness settings of VAGEN, RAGEN and ROLL selectable by name (``rules=``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv as GymFrozenLake
from gymnasium.envs.toy_text.frozen_lake import generate_random_map
from PIL import Image, ImageDraw

from .presets import resolve_rules


@dataclass(frozen=True)
class FrozenLakeRules:
    """One system's FrozenLake settings: map ``size``, the probability ``p`` that a cell is frozen (not a hole),
    whether the ice is slippery (gymnasium's: the intended move with probability 1/3, each perpendicular one 1/3),
    and the step cap. ``source`` says where each value was read, and what could not be verified."""

    size: int = 4
    p: float = 0.8
    is_slippery: bool = False
    max_steps: int = 100
    source: str = ""


RULES: dict[str, FrozenLakeRules] = {
    "vagen": FrozenLakeRules(
        is_slippery=False,
        source="VAGEN (github RAGEN-AI/vagen): vagen/env/frozenlake/env_config.py (size 4, p 0.8, is_slippery "
        "False, max_actions_per_step 3). Its step cap was not verified here: gymnasium's 100 for a 4x4 map.",
    ),
    "ragen": FrozenLakeRules(
        is_slippery=True,
        max_steps=10,
        source="RAGEN (github RAGEN-AI/RAGEN): config/envs.yaml FrozenLake (max_actions_per_traj 10: the cap here, "
        "env_config null: the defaults of its FrozenLakeEnvConfig, size 4, p 0.8, is_slippery True).",
    ),
    "roll": FrozenLakeRules(
        is_slippery=True,
        max_steps=10,
        source="ROLL (github alibaba/ROLL): its agentic FrozenLakeEnvConfig is RAGEN's (size 4, p 0.8, is_slippery "
        "True); only an excerpt was read here, so the values and the 10-action cap are RAGEN's, not verified in ROLL.",
    ),
    "gymnasium": FrozenLakeRules(
        is_slippery=True,
        source="gymnasium FrozenLake-v1: generate_random_map(size=4, p=0.8), is_slippery=True, "
        "max_episode_steps=100 for the 4x4 map (its registration).",
    ),
}

# Cell colours: each kind distinct, and the agent a red disc.
ICE, HOLE, GOAL, START, AGENT = (200, 230, 250), (20, 40, 120), (40, 180, 60), (170, 200, 225), (220, 40, 40)
# The text-only systems' symbols (RAGEN/VAGEN): P player, _ frozen, O hole, G goal, X player in a hole, √ on the goal.
SYMBOLS = {"F": "_", "S": "_", "H": "O", "G": "G"}


def solve_frozen_lake(desc: list[str], is_slippery: bool, horizon: int) -> np.ndarray:
    """The optimal policy for reaching the goal within ``horizon`` steps: ``(horizon + 1, cells)`` action table,
    ``policy[t, cell]`` the best action with ``t`` steps left (value iteration on gymnasium's own transition table,
    so it is exact for slippery ice too; ties go to the lowest action index). Cached per map."""
    return _solve(tuple(desc), bool(is_slippery), int(horizon))[0]


@functools.lru_cache(maxsize=256)
def _solve(desc: tuple[str, ...], is_slippery: bool, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(policy, success probability per cell with ``horizon`` steps left)."""
    model = GymFrozenLake(desc=list(desc), is_slippery=is_slippery)
    cells = len(model.P)
    # transition[s, a, s'] probabilities and reward[s, a] expected immediate goal reward (terminal moves only)
    transition, reward = np.zeros((cells, 4, cells)), np.zeros((cells, 4))
    for s in range(cells):
        for a in range(4):
            for prob, nxt, r, done in model.P[s][a]:
                if done:
                    reward[s, a] += prob * r
                else:
                    transition[s, a, nxt] += prob
    value = np.zeros(cells)  # success probability with 0 steps left
    policy = np.zeros((horizon + 1, cells), dtype=np.int64)
    for t in range(1, horizon + 1):
        q = reward + transition @ value
        policy[t], value = q.argmax(axis=1), q.max(axis=1)
    return policy, value


class FrozenLakeEnv(gym.Env):
    """
    ## Description
    Walk from the start (top left) to the goal (bottom right) across a frozen lake without falling into a hole.
    Every reset draws a new ``size``×``size`` map with gymnasium's ``generate_random_map`` (each cell frozen with
    probability ``p``, a path to the goal guaranteed), seeded from this env's ``np_random``; the moves, slipping and
    rewards are gymnasium's ``FrozenLake-v1``. ``rules=`` selects a published setting (`RULES`).

    ## Action Space
    `Discrete(4)`, gymnasium's order: 0 ``left``, 1 ``down``, 2 ``right``, 3 ``up``. On slippery ice the move goes
    the intended way with probability 1/3 and each perpendicular way with 1/3.

    ## Observation Space
    `Box(0, 255, (size * tile_size, size * tile_size, 3), uint8)`: ice pale blue, holes dark blue, the goal green,
    the start a darker pale blue, the agent a red disc.

    ## Rewards
    1 on reaching the goal, 0 otherwise (gymnasium's).

    ## Episode End
    Terminates on the goal (``info["is_success"]``) or in a hole; truncated after ``max_steps`` steps.

    ## Information
    ``info["grid_text"]`` (RAGEN's symbols: ``P`` you, ``_`` ice, ``O`` hole, ``G`` goal, ``X`` you in a hole,
    ``√`` you on the goal), ``info["map"]`` (gymnasium's ``S``/``F``/``H``/``G`` rows), ``info["steps"]``,
    ``info["is_success"]``.

    ## Arguments
    - ``rules`` (default ``"vagen"``): a name in `RULES` (``"vagen"``, ``"ragen"``, ``"roll"``, ``"gymnasium"``) or
      a `FrozenLakeRules`.
    - ``size``, ``p``, ``is_slippery``, ``max_steps``: override the rules' values.
    - ``tile_size`` (default 32): pixels per cell. ``render_mode``: only ``"rgb_array"``.

    ``reset(options={"map": ["SFFF", ...]})`` plays a given map instead of a random one.

    ## Version History
    - v0: random maps per reset, seeded through ``np_random`` only, on gymnasium's FrozenLake-v1 dynamics.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    ACTION_NAMES = ("left", "down", "right", "up")

    def __init__(
        self, rules: str | FrozenLakeRules = "vagen", size: int | None = None, p: float | None = None,
        is_slippery: bool | None = None, max_steps: int | None = None, tile_size: int = 32,
        render_mode: str | None = "rgb_array",
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Unsupported render_mode {render_mode!r}; the only render mode is 'rgb_array'.")
        self.rules = rules = resolve_rules(rules, RULES, "FrozenLake", FrozenLakeRules)
        self.size = int(size if size is not None else rules.size)
        self.p = float(p if p is not None else rules.p)
        self.is_slippery = bool(is_slippery if is_slippery is not None else rules.is_slippery)
        self.max_steps = int(max_steps if max_steps is not None else rules.max_steps)
        if self.size < 2 or not 0.0 < self.p <= 1.0 or self.max_steps < 1 or int(tile_size) < 4:
            raise ValueError(
                f"FrozenLake needs size >= 2, p in (0, 1], max_steps >= 1 and tile_size >= 4; got size={self.size}, "
                f"p={self.p}, max_steps={self.max_steps}, tile_size={tile_size}."
            )
        self.tile_size = int(tile_size)
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(4)
        side = self.size * self.tile_size
        self.observation_space = spaces.Box(0, 255, (side, side, 3), np.uint8)
        self.desc: list[str] = []
        self._lake: GymFrozenLake | None = None
        self._cell, self._steps, self._done = 0, 0, False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        map_seed = int(self.np_random.integers(2**31))  # drawn even with a given map: the stream stays the same
        given = (options or {}).get("map")
        if given is not None:
            desc = [str(row) for row in given]
            if len(desc) != self.size or any(len(row) != self.size or set(row) - set("SFHG") for row in desc):
                raise ValueError(f"`options['map']` must be {self.size} rows of {self.size} S/F/H/G cells, got {given}.")
        else:
            desc = generate_random_map(size=self.size, p=self.p, seed=map_seed)
        self.desc = desc
        self._lake = GymFrozenLake(desc=desc, is_slippery=self.is_slippery)
        self._cell, _ = self._lake.reset(seed=int(self.np_random.integers(2**31)))
        self._steps, self._done = 0, False
        return self.render(), self._info()

    def step(self, action):
        if self._lake is None:
            raise RuntimeError("Call reset() before step().")
        if not self.action_space.contains(action):
            raise ValueError(f"Invalid action {action!r}; expected 0-3 ({', '.join(self.ACTION_NAMES)}).")
        self._cell, reward, terminated, _, _ = self._lake.step(int(action))
        self._steps += 1
        truncated = not terminated and self._steps >= self.max_steps
        return self.render(), float(reward), bool(terminated), truncated, self._info()

    @property
    def cell(self) -> int:
        """The agent's cell, ``row * size + column`` (gymnasium's observation)."""
        return self._cell

    def _kind(self, cell: int) -> str:
        return self.desc[cell // self.size][cell % self.size]

    def _info(self) -> dict:
        rows = []
        for r, line in enumerate(self.desc):
            row = [SYMBOLS[ch] for ch in line]
            if self._cell // self.size == r:
                kind = self._kind(self._cell)
                row[self._cell % self.size] = {"H": "X", "G": "√"}.get(kind, "P")
            rows.append("".join(row))
        return {"grid_text": "\n".join(rows), "map": list(self.desc), "steps": self._steps,
                "is_success": self._kind(self._cell) == "G"}

    def render(self):
        """The current frame (H×W×3 uint8)."""
        t, side = self.tile_size, self.observation_space.shape[0]
        image = Image.new("RGB", (side, side), ICE)
        if not self.desc:
            return np.asarray(image, dtype=np.uint8)
        draw = ImageDraw.Draw(image)
        colours = {"F": ICE, "S": START, "H": HOLE, "G": GOAL}
        for r, line in enumerate(self.desc):
            for c, ch in enumerate(line):
                draw.rectangle([c * t, r * t, c * t + t - 1, r * t + t - 1], fill=colours[ch], outline=(120, 150, 180))
        r, c = divmod(self._cell, self.size)
        m = max(1, t // 5)
        draw.ellipse([c * t + m, r * t + m, c * t + t - 1 - m, r * t + t - 1 - m], fill=AGENT)
        return np.asarray(image, dtype=np.uint8)
