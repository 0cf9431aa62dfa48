"""The shared machinery of the points games (EZPoints, Points24): type a formula from the cards' numbers.

`PointsGameEnv` holds the rules; the subclasses `EZPointsEnv` (``ez_points.py``) and `Points24Env`
(``points24.py``) choose the deal, the operators, the target and the formula length cap.

Rules (after RL4VLM's gym_cards): every action appends its token to the formula. A number that is not on a card, or
is used more often than it appears on the cards, is invalid: reward −1 and a blank (``" "``) is appended instead,
as RL4VLM does, so an invalid action still lengthens the formula. ``=`` evaluates the formula: +10 if it equals the
target and every card was used, −1 otherwise; the episode terminates. Two rule sets (``rules=``) decide how the
formula is read and when the length cap bites:

- ``"exact"`` (the default): one token per number (``2`` then ``4`` is two numbers, a syntax error), only
  ``+ - * / ( )``, exact rational arithmetic (`vlm_env_ppo.envs.formula.evaluate`; blanks are skipped); the step
  that makes the formula longer than the cap truncates the episode with −1.
- ``"rl4vlm"``: RL4VLM's semantics, for comparisons with the paper (`evaluate_rl4vlm`): the tokens are read as the
  Python text they join into (``2`` ``4`` is 24, ``*`` ``*`` a power, ``/`` ``/`` floor division, ``/`` float
  division compared with ``==``), with a bound on integer powers instead of RL4VLM's hang; the cap is checked
  before the action, so one token past the cap is accepted (0, or −1 if invalid) and the next action, even ``=``,
  is ignored with −1 and truncation. ``info["formula_text"]`` (what the prompt shows) is joined without spaces.
"""

from __future__ import annotations

from collections import Counter

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from .cards import SUITS, TABLE_GREEN, card_value, font, paste_card, points_action_names, rank_label, wrap_tokens
from .formula import BLANK, DEFAULT_RULES, check_rules, formula_equals, join_formula
from .solvers import solve_points

FRAME_SIZE = 300
FORMULA_FONT_SIZE = 20


class PointsGameEnv(gym.Env):
    """Base class of the points games; see `EZPointsEnv` and `Points24Env` for the documented envs."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    ACTION_NAMES: tuple[str, ...] = ()
    OPERATORS: tuple[str, ...] = ()
    DEFAULT_TARGET = 24
    DEFAULT_MAX_FORMULA_LENGTH = 20

    def __init__(
        self,
        render_mode: str | None = "rgb_array",
        target: int | None = None,
        treat_face_cards_as_10: bool = True,
        max_formula_length: int | None = None,
        rules: str = DEFAULT_RULES,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Unsupported render_mode {render_mode!r}; the only render mode is 'rgb_array'.")
        self.render_mode = render_mode
        self.target = self.DEFAULT_TARGET if target is None else int(target)
        self.treat_face_cards_as_10 = bool(treat_face_cards_as_10)
        self.max_formula_length = (
            self.DEFAULT_MAX_FORMULA_LENGTH if max_formula_length is None else int(max_formula_length)
        )
        if self.max_formula_length < 1:
            raise ValueError(f"`max_formula_length` must be >= 1, got {self.max_formula_length}.")
        self.rules = check_rules(rules)
        # J/Q/K as 10 (the default) keeps the numbers 1..10; otherwise they are 11..13 and the actions grow to match.
        self.action_names = points_action_names(10 if self.treat_face_cards_as_10 else 13, self.OPERATORS)
        self.action_space = spaces.Discrete(len(self.action_names))
        self.observation_space = spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
        self._ranks: list[int] = []
        self._suits: list[str] = []
        self._numbers: list[int] = []
        self._formula: list[str] = []
        self._used: Counter = Counter()
        self._solvable = False
        self._table: Image.Image | None = None  # the cards, drawn once per deal; the formula is drawn per step
        self._frame = np.zeros(self.observation_space.shape, np.uint8)

    # -- the deal -------------------------------------------------------------------------------------------------
    def _deal(self) -> tuple[list[int], list[str]]:
        """Ranks (1..13) and suits of the cards, drawn from ``self.np_random``. Subclasses implement it."""
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._ranks, self._suits = self._deal()
        if options and options.get("ranks") is not None:  # a fixed deal, e.g. for evaluation or tests
            self._ranks, self._suits = _fixed_deal(options, len(self._ranks), self._suits)
        self._numbers = [card_value(rank, self.treat_face_cards_as_10) for rank in self._ranks]
        self._formula = []
        self._used = Counter()
        operators = [op for op in ("+", "-", "*", "/") if op in self.OPERATORS]
        solution = solve_points(self._numbers, self.target, operators, "(" in self.OPERATORS, rules=self.rules)
        self._solvable = solution is not None
        self._table = self._draw_table()
        self._frame = self._draw_frame()
        return self._frame.copy(), self._get_info()

    # -- the rules ------------------------------------------------------------------------------------------------
    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"Invalid action {action!r}; expected an int in [0, {self.action_space.n}).")
        name = self.action_names[int(action)]
        reward, terminated, truncated = 0.0, False, False
        invalid_number = success = False
        if self.rules == "rl4vlm" and len(self._formula) > self.max_formula_length:
            # RL4VLM checks the cap before the action: the step after the over-long one is ignored, even "=".
            reward, truncated = -1.0, True
        elif name == "=":
            used_all = sum(self._used.values()) == len(self._numbers)
            length = max(256, len(self._formula))  # the env's own cap decides the length, not the evaluator's
            success = used_all and formula_equals(self._formula, self.target, self.rules, max_length=length)
            reward, terminated = (10.0 if success else -1.0), True
        elif name.isdigit():
            number = int(name)
            if self._used[number] + 1 > self._numbers.count(number):
                invalid_number, reward = True, -1.0
                self._formula.append(BLANK)  # RL4VLM: "add a space to make sure the formula length increases"
            else:
                self._used[number] += 1
                self._formula.append(name)
        else:
            self._formula.append(name)
        if self.rules == "exact" and not terminated and len(self._formula) > self.max_formula_length:
            reward, truncated = -1.0, True  # one −1 for the step, also when the number was invalid
        self._frame = self._draw_frame()
        info = self._get_info()
        info.update(is_success=success, invalid_number=invalid_number)
        return self._frame.copy(), reward, terminated, truncated, info

    def _get_info(self) -> dict:
        return {
            "Cards": [rank_label(rank) for rank in self._ranks],
            "Suits": list(self._suits),
            "Numbers": list(self._numbers),
            "Formula": list(self._formula),
            "formula_text": join_formula(self._formula, self.rules),  # what the prompt shows: "2 4", or "24" (rl4vlm)
            "target": self.target,
            "solvable": self._solvable,
            "rules": self.rules,
            "is_success": False,
            "invalid_number": False,
        }

    # -- drawing --------------------------------------------------------------------------------------------------
    def _card_boxes(self) -> list[tuple[int, int, int, int]]:
        n = len(self._ranks)
        gap = 10 if n <= 2 else 6
        width = min(110, (FRAME_SIZE - 2 * 8 - (n - 1) * gap) // n)
        height = int(width * 1.4)
        total = n * width + (n - 1) * gap
        left0 = (FRAME_SIZE - total) // 2
        top = 30 if n <= 2 else 50
        return [(left0 + i * (width + gap), top, left0 + i * (width + gap) + width, top + height) for i in range(n)]

    def _draw_table(self) -> Image.Image:
        image = Image.new("RGB", (FRAME_SIZE, FRAME_SIZE), TABLE_GREEN)
        for box, rank, suit in zip(self._card_boxes(), self._ranks, self._suits):
            paste_card(image, box, rank_label(rank), suit)
        return image

    def _draw_frame(self) -> np.ndarray:
        image = self._table.copy()
        draw = ImageDraw.Draw(image)
        top = self._card_boxes()[0][3] + 14
        size, width = FORMULA_FONT_SIZE, FRAME_SIZE - 20
        # Like RL4VLM's frame, tokens are joined by spaces under both rule sets (only its prompt joined them without);
        # a blank (invalid number) shows as a wider gap. A formula that does not fit after "Formula:" goes on the
        # lines below it.
        lines = wrap_tokens(["Formula:", *self._formula], size, width)
        if len(lines) > 1:
            lines = ["Formula:", *wrap_tokens(self._formula, size, width)]
        for i, line in enumerate(lines):
            draw.text((10, top + i * (size + 6)), line, font=font(size), fill="white")
        return np.array(image, dtype=np.uint8)

    def render(self):
        """The current frame (H×W×3 uint8)."""
        return self._frame.copy()


def _fixed_deal(options: dict, num_cards: int, drawn_suits: list[str]) -> tuple[list[int], list[str]]:
    """The deal given by ``options["ranks"]`` (and optionally ``options["suits"]``), validated."""
    ranks = [int(rank) for rank in options["ranks"]]
    if len(ranks) != num_cards or not all(1 <= rank <= 13 for rank in ranks):
        raise ValueError(f"`options['ranks']` must be {num_cards} ranks in 1..13 (A=1, J=11, Q=12, K=13), got {ranks}.")
    suits = list(options.get("suits") or drawn_suits)
    if len(suits) != num_cards or not all(suit in SUITS for suit in suits):
        raise ValueError(f"`options['suits']` must be {num_cards} of {SUITS}, got {suits}.")
    return ranks, suits


def deal_suits(np_random: np.random.Generator, n: int) -> list[str]:
    """``n`` suits drawn uniformly from ``np_random``."""
    return [SUITS[int(i)] for i in np_random.integers(0, len(SUITS), size=n)]
