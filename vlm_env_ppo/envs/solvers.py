"""Reference policies for the gym_cards envs: exact where the game allows it.

Used by the tests (oracle success rates), by benchmarks, and to generate SFT data (frames with correct answers):

- `number_line_oracle`: the shortest path to the target (always succeeds).
- `solve_points`: an exact solver for the points games (EZPoints, Points24); `points_expert_action` types its
  solution token by token and then presses ``=``.
- `blackjack_basic_strategy`: standard hit/stand basic strategy against the dealer's up card.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction

from .cards import POINTS_OPERATORS, points_action_names
from .formula import BLANK


# ---------------------------------------------------------------------------------------------------- NumberLine
def number_line_oracle(info: dict) -> int:
    """The optimal NumberLine action from the env's ``info``: 1 (``+``) below the target, 0 (``-``) otherwise."""
    return 1 if int(info["Current"]) < int(info["Target"]) else 0


# ---------------------------------------------------------------------------------------------------- points games
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _combine(a: tuple, b: tuple, operators: Sequence[str]):
    """Every (value, tree) made from the (value, tree) pairs ``a`` and ``b`` with one operator, in a fixed order."""
    (va, ta), (vb, tb) = a, b
    if "+" in operators:
        yield va + vb, ("+", ta, tb)
    if "*" in operators:
        yield va * vb, ("*", ta, tb)
    if "-" in operators:
        yield va - vb, ("-", ta, tb)
        yield vb - va, ("-", tb, ta)
    if "/" in operators:
        if vb != 0:
            yield va / vb, ("/", ta, tb)
        if va != 0:
            yield vb / va, ("/", tb, ta)


def _precedence(tree) -> int:
    return 3 if isinstance(tree, int) else _PRECEDENCE[tree[0]]


def tree_to_tokens(tree) -> list[str]:
    """Tokens of an expression tree (an int, or ``(op, left, right)``) with only the parentheses it needs."""
    if isinstance(tree, int):
        return [str(tree)]
    op, left, right = tree
    left_tokens, right_tokens = tree_to_tokens(left), tree_to_tokens(right)
    if _precedence(left) < _PRECEDENCE[op]:
        left_tokens = ["(", *left_tokens, ")"]
    # a - (b - c) and a / (b / c) need their parentheses; a + (b - c) and a * (b / c) do not (exact arithmetic).
    if _precedence(right) < _PRECEDENCE[op] or (_precedence(right) == _PRECEDENCE[op] and op in "-/"):
        right_tokens = ["(", *right_tokens, ")"]
    return [*left_tokens, op, *right_tokens]


def _search(items: list[tuple], target: Fraction, operators: Sequence[str], parentheses: bool):
    """Depth-first search: combine two items into one until one is left; the first tree worth ``target``."""
    if len(items) == 1:
        value, tree = items[0]
        if value == target and (parentheses or "(" not in tree_to_tokens(tree)):
            return tree
        return None
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = [item for k, item in enumerate(items) if k not in (i, j)]
            for combined in _combine(items[i], items[j], operators):
                tree = _search([*rest, combined], target, operators, parentheses)
                if tree is not None:
                    return tree
    return None


@functools.lru_cache(maxsize=65536)
def _solve_sorted(numbers: tuple[int, ...], target: Fraction, operators: tuple[str, ...], parentheses: bool):
    items = [(Fraction(n), n) for n in numbers]
    tree = _search(items, target, operators, parentheses)
    return None if tree is None else tuple(tree_to_tokens(tree))


def solve_points(
    numbers: Sequence[int],
    target: int = 24,
    operators: Sequence[str] = ("+", "-", "*", "/"),
    parentheses: bool = True,
) -> list[str] | None:
    """A formula that uses each of ``numbers`` exactly once and equals ``target``, as tokens; `None` if none exists.

    Exact: searches every way to combine the numbers with the ``operators`` and any parenthesization, in
    `fractions.Fraction` arithmetic (so ``[3, 3, 8, 8]`` gives ``["8", "/", "(", "3", "-", "8", "/", "3", ")"]``).
    With ``parentheses=False`` only formulas that need no parentheses count. Results are cached per multiset of
    numbers, so solving many deals is cheap.

    >>> solve_points([3, 3, 8, 8], 24)
    ['8', '/', '(', '3', '-', '8', '/', '3', ')']
    >>> solve_points([1, 1, 1, 1], 24) is None
    True
    """
    key = tuple(sorted(int(n) for n in numbers))
    ops = tuple(op for op in ("+", "-", "*", "/") if op in operators)
    tokens = _solve_sorted(key, Fraction(target), ops, bool(parentheses))
    return None if tokens is None else list(tokens)


def default_points_action_names(info: dict) -> tuple[str, ...]:
    """The action names of the env that produced ``info``, for the default env arguments.

    Two cards: EZPoints (``+``, ``*``); otherwise Points24 (``+ - * / ( )``). Numbers go up to 13 when a card is
    worth more than 10 (``treat_face_cards_as_10=False``). Pass ``env.unwrapped.action_names`` instead to be exact.
    """
    numbers = [int(n) for n in info["Numbers"]]
    max_number = 13 if max(numbers) > 10 else 10
    operators = ("+", "*") if len(numbers) == 2 else POINTS_OPERATORS
    return points_action_names(max_number, operators)


def points_expert_action(info: dict, target: int | None = None, action_names: Sequence[str] | None = None) -> int:
    """The next action of an expert for EZPoints / Points24, from the env's ``info``.

    The expert solves the deal (`solve_points` over ``info["Numbers"]`` with the operators the env offers), types
    the solution token by token, then presses ``=``. Blanks (what the env appends for an invalid number) are
    ignored. If the formula typed so far is not a prefix of the solution (someone else typed it), or the deal has
    no solution, the expert presses ``=`` at once: the game has no undo, so nothing can be rescued.

    Args:
        info (`dict`): the env's ``info`` with ``"Numbers"`` and ``"Formula"`` (and ``"target"``).
        target (`int`, *optional*): defaults to ``info["target"]``.
        action_names (`Sequence[str]`, *optional*): the env's action names (``env.unwrapped.action_names``);
            defaults to `default_points_action_names`.
    """
    if target is None:
        target = info["target"]
    if action_names is None:
        action_names = default_points_action_names(info)
    names = list(action_names)
    operators = [op for op in ("+", "-", "*", "/") if op in names]
    solution = solve_points(info["Numbers"], target, operators, parentheses="(" in names)
    typed = [str(token) for token in info.get("Formula", []) if str(token) != BLANK]
    if solution is None or typed != solution[: len(typed)] or len(typed) == len(solution):
        return names.index("=")
    return names.index(solution[len(typed)])


# ---------------------------------------------------------------------------------------------------- Blackjack
def blackjack_basic_strategy(info: dict) -> int:
    """Basic strategy restricted to hit (1) / stand (0), for a dealer who stands on all 17s (gymnasium's rules).

    Hard totals: hit on 11 or less; on 12 stand against a dealer 4-6; on 13-16 stand against 2-6; stand on 17+.
    Soft totals (a usable ace): hit on soft 17 or less; on soft 18 stand against 2-8 and hit against 9, 10, ace;
    stand on soft 19+. Reads ``info["player_sum"]``, ``info["usable_ace"]`` and ``info["dealer_value"]`` (1 = ace).
    """
    total = int(info["player_sum"])
    dealer = int(info["dealer_value"])
    if info["usable_ace"]:
        if total >= 19:
            return 0
        if total == 18:
            return 0 if 2 <= dealer <= 8 else 1
        return 1
    if total >= 17:
        return 0
    if total >= 13:
        return 0 if 2 <= dealer <= 6 else 1
    if total == 12:
        return 0 if 4 <= dealer <= 6 else 1
    return 1
