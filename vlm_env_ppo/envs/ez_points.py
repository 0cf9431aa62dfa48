"""EZPoints: make 12 from two cards (RL4VLM's gym_cards ``EZPoints-v0``)."""

from __future__ import annotations

import numpy as np

from .cards import points_action_names
from .points import PointsGameEnv, deal_suits


def deal_ez_points(np_random: np.random.Generator, target: int = 12, treat_face_cards_as_10: bool = True):
    """Ranks and suits of an EZPoints deal: two cards whose numbers make ``target`` by sum or by product.

    The first card is 2..K (2..Q when face cards keep their rank, as a K could not make 12). Its partner makes
    ``target`` by product half of the time when the first number divides ``target``, by sum otherwise (RL4VLM's
    deal). The two cards are then swapped half of the time. A partner card is a number card (never J/Q/K), as in
    RL4VLM. Draw order on ``np_random``: first rank, product coin, swap coin, two suits.
    """
    top = 13 if treat_face_cards_as_10 else 12
    first = int(np_random.integers(2, top + 1))
    value = min(first, 10) if treat_face_cards_as_10 else first
    product_coin = float(np_random.random())
    by_sum, by_product = _partners(value, target, 10 if treat_face_cards_as_10 else 13)
    if by_product is not None and (product_coin < 0.5 or by_sum is None):
        second = by_product
    elif by_sum is not None:
        second = by_sum
    else:
        raise ValueError(f"No card makes {target} with a {value} by sum or product; use a target of 11 or 12.")
    ranks = [first, second]
    if float(np_random.random()) < 0.5:
        ranks.reverse()
    return ranks, deal_suits(np_random, 2)


def _partners(value: int, target: int, max_number: int) -> tuple[int | None, int | None]:
    """The card numbers that make ``target`` with ``value`` by sum and by product (`None` where there is none)."""
    by_sum = target - value if 1 <= target - value <= max_number else None
    by_product = target // value if target % value == 0 and 1 <= target // value <= max_number else None
    return by_sum, by_product


class EZPointsEnv(PointsGameEnv):
    """
    ## Description
    Two playing cards lie on a green table. The agent types a formula, one number or operator per step, that
    makes 12 using the number of each card exactly once, then presses ``=``. J, Q and K count 10; A counts 1.
    The deal always has a solution: the second card makes 12 with the first by sum, or (half of the time, when
    the first number divides 12) by product. This is the "EZPoints" task of Zhai et al. (NeurIPS 2024), RL4VLM's
    ``gym_cards/EZPoints-v0``.

    ## Action Space
    `Discrete(13)`: 0-9 type the numbers 1-10, 10 ``+``, 11 ``*``, 12 ``=`` (`ACTION_NAMES`). With
    ``treat_face_cards_as_10=False`` the numbers go to 13: `Discrete(16)`, see ``env.action_names``.

    ## Observation Space
    `Box(0, 255, (300, 300, 3), uint8)`: the two cards (rank and suit drawn on white cards) and, under them,
    "Formula: ..." with the tokens typed so far.

    ## Rewards
    - A number that is not on a card, or used more often than it appears on the cards: −1, and a blank is
      appended to the formula instead of the number (RL4VLM's behaviour: the formula still grows).
    - ``=``: +10 if the formula equals 12 and both cards were used, −1 otherwise (including a syntax error). With
      the default ``rules="exact"`` typing ``1`` then ``2`` is two numbers (a syntax error); with ``rules="rl4vlm"``
      it is 12, as RL4VLM's ``eval`` read it.
    - A step that makes the formula longer than ``max_formula_length`` (5): −1 (``rules="rl4vlm"``: the step
      after it, see Episode End).
    - Any other step: 0.

    ## Episode End
    - Termination: ``=`` was pressed.
    - Truncation: the formula became longer than ``max_formula_length`` tokens (blanks count): that step itself
      truncates (``rules="exact"``). With ``rules="rl4vlm"``, as in RL4VLM, the cap is checked before the action:
      the step that makes the formula one token too long is played as usual, and the next one (even ``=``) is
      ignored with −1 and truncation.

    ## Information
    ``info`` has ``"Cards"`` (rank labels as printed, e.g. ``["K", "2"]``), ``"Suits"``, ``"Numbers"`` (the
    values used in arithmetic, e.g. ``[10, 2]``), ``"Formula"`` (the tokens typed so far, RL4VLM's key, blanks as
    ``" "``), ``"formula_text"`` (what the prompt shows: the tokens joined by spaces, or
    without separators under ``rules="rl4vlm"``, as RL4VLM's prompt did), ``"rules"``, ``"target"``, ``"solvable"`` (always `True` here),
    ``"is_success"`` and ``"invalid_number"`` (this step's number was not available).

    ## Arguments
    - ``render_mode`` (default ``"rgb_array"``): the only render mode; `render` returns the current frame.
    - ``target`` (default 12): the number to make.
    - ``treat_face_cards_as_10`` (default `True`): J/Q/K count 10; with `False` they count 11/12/13.
    - ``max_formula_length`` (default 5): the longest formula (tokens) before truncation.
    - ``rules`` (default ``"exact"``): how ``=`` reads the formula. ``"exact"``: one token per number, exact rational
      arithmetic. ``"rl4vlm"``: RL4VLM's ``eval`` of the tokens joined without separators, for comparisons with the
      paper: numbers typed side by side are one number (``1`` ``2`` is 12), ``*`` ``*`` is a power, ``/`` is float
      division compared with ``==`` to 12, integer powers over 2**4096 count as invalid (RL4VLM hung on them;
      no winning formula reaches them), and the length cap bites one step late (see Episode End). Any other value
      raises `ValueError`.

    ``reset(options={"ranks": [13, 2]})`` deals the given ranks (1..13, A=1, J=11, Q=12, K=13; optionally
    ``"suits"`` too) instead of random ones, e.g. to evaluate on fixed deals.

    ## Version History
    - v0: the RL4VLM rules, with exact arithmetic instead of `eval` and seeding through ``np_random`` only;
      ``rules="rl4vlm"`` added for RL4VLM's own formula semantics (the default stays ``"exact"``).
    """

    ACTION_NAMES = points_action_names(10, ("+", "*"))
    OPERATORS = ("+", "*")
    DEFAULT_TARGET = 12
    DEFAULT_MAX_FORMULA_LENGTH = 5

    def __init__(
        self,
        render_mode: str | None = "rgb_array",
        target: int | None = None,
        treat_face_cards_as_10: bool = True,
        max_formula_length: int | None = None,
        rules: str = "exact",
    ):
        super().__init__(render_mode, target, treat_face_cards_as_10, max_formula_length, rules)
        max_number = 10 if self.treat_face_cards_as_10 else 13
        firsts = range(2, 11) if self.treat_face_cards_as_10 else range(2, 13)
        impossible = [v for v in firsts if _partners(v, self.target, max_number) == (None, None)]
        if impossible:
            raise ValueError(
                f"EZPoints cannot deal for target={self.target}: no card makes it with {impossible}. "
                "Use the default target 12 (or 11)."
            )

    def _deal(self):
        return deal_ez_points(self.np_random, self.target, self.treat_face_cards_as_10)
