"""Points24: the 24 game with four cards (RL4VLM's gym_cards ``Points24-v0``)."""

from __future__ import annotations

import numpy as np

from .cards import POINTS_OPERATORS, points_action_names
from .points import PointsGameEnv, deal_suits


def deal_points24(np_random: np.random.Generator, num_cards: int = 4):
    """Ranks (1..13, uniform, independent) and suits of ``num_cards`` cards. Draw order: ranks, then suits."""
    ranks = [int(r) for r in np_random.integers(1, 14, size=num_cards)]
    return ranks, deal_suits(np_random, num_cards)


class Points24Env(PointsGameEnv):
    """
    ## Description
    Four playing cards lie on a green table. The agent types a formula, one number, operator or parenthesis per
    step, that makes 24 using the number of each card exactly once, then presses ``=``. A counts 1 and J, Q, K
    count 10 (by default). Ranks are uniform and independent, so many deals have no solution:
    ``info["solvable"]`` says whether this one has (found by the exact solver `solve_points`, under the env's
    rule set). This is the "Points24" task of Zhai et al. (NeurIPS 2024), RL4VLM's ``gym_cards/Points24-v0``.

    ## Action Space
    `Discrete(17)`: 0-9 type the numbers 1-10, then 10 ``+``, 11 ``-``, 12 ``*``, 13 ``/``, 14 ``(``, 15 ``)``,
    16 ``=`` (`ACTION_NAMES`). With ``treat_face_cards_as_10=False`` the numbers go to 13: `Discrete(20)`, see
    ``env.action_names``.

    ## Observation Space
    `Box(0, 255, (300, 300, 3), uint8)`: the four cards (rank and suit drawn on white cards) and, under them,
    "Formula: ..." with the tokens typed so far (wrapped onto more lines when long).

    ## Rewards
    - A number that is not on a card, or used more often than it appears on the cards: −1, and a blank is
      appended to the formula instead of the number (RL4VLM's behaviour: the formula still grows).
    - ``=``: +10 if the formula equals 24 exactly (rational arithmetic: ``8 / (3 - 8 / 3)`` counts) and all four
      cards were used; −1 otherwise, including syntax errors and division by zero.
    - A step that makes the formula longer than ``max_formula_length`` (20): −1 (``rules="rl4vlm"``: the step
      after it, see Episode End).
    - Any other step: 0.

    Each number action is one token: typing ``2`` then ``4`` is two numbers side by side (a syntax error), not
    24. (RL4VLM joined the tokens into a string for `eval`, which read them as one number; ``rules="rl4vlm"``
    does the same, and also reads ``*`` ``*`` as a power and ``/`` ``/`` as floor division, in floats.)
    ``info["solvable"]`` follows the rule set: 73.1% of deals can be won under ``"exact"``, 86.3% under
    ``"rl4vlm"`` (over all rank tuples; ``tests/test_solvers.py`` prints both).

    ## Episode End
    - Termination: ``=`` was pressed.
    - Truncation: the formula became longer than ``max_formula_length`` tokens (blanks count): that step itself
      truncates (``rules="exact"``). With ``rules="rl4vlm"``, as in RL4VLM, the cap is checked before the action:
      the step that makes the formula one token too long is played as usual, and the next one (even ``=``) is
      ignored with −1 and truncation.

    ## Information
    ``info`` has ``"Cards"`` (rank labels as printed, e.g. ``["A", "7", "Q", "3"]``), ``"Suits"``,
    ``"Numbers"`` (values used in arithmetic, e.g. ``[1, 7, 10, 3]``), ``"Formula"`` (the tokens typed so far,
    RL4VLM's key, blanks as ``" "``), ``"formula_text"`` (what the prompt shows: the tokens joined by spaces, or
    without separators under ``rules="rl4vlm"``, as RL4VLM's prompt did), ``"rules"``, ``"target"``, ``"solvable"``,
    ``"is_success"`` and ``"invalid_number"`` (this step's number was not available).

    ## Arguments
    - ``render_mode`` (default ``"rgb_array"``): the only render mode; `render` returns the current frame.
    - ``target`` (default 24): the number to make.
    - ``treat_face_cards_as_10`` (default `True`): J/Q/K count 10; with `False` they count 11/12/13 (RL4VLM's
      option of the same name).
    - ``max_formula_length`` (default 20): the longest formula (tokens) before truncation.
    - ``rules`` (default ``"exact"``): how ``=`` reads the formula. ``"exact"``: one token per number, exact rational
      arithmetic. ``"rl4vlm"``: RL4VLM's ``eval`` of the tokens joined without separators, for comparisons with the
      paper: numbers typed side by side are one number (``1`` ``2`` is 12), ``*`` ``*`` is a power, ``/`` is float
      division compared with ``==`` to 24, ``/`` ``/`` floor division, integer powers over 2**4096 count as invalid (RL4VLM hung on them;
      no winning formula reaches them), and the length cap bites one step late (see Episode End). Any other value
      raises `ValueError`.

    ``reset(options={"ranks": [8, 3, 8, 3]})`` deals the given ranks (1..13, A=1, J=11, Q=12, K=13; optionally
    ``"suits"`` too) instead of random ones, e.g. to evaluate on fixed deals.

    ## Version History
    - v0: the RL4VLM rules, with exact arithmetic instead of `eval`, one token per number, and seeding through
      ``np_random`` only; ``rules="rl4vlm"`` added for RL4VLM's own formula semantics (the default stays
      ``"exact"``).
    """

    ACTION_NAMES = points_action_names(10, POINTS_OPERATORS)
    OPERATORS = POINTS_OPERATORS
    DEFAULT_TARGET = 24
    DEFAULT_MAX_FORMULA_LENGTH = 20

    def _deal(self):
        return deal_points24(self.np_random)
