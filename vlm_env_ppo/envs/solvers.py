"""Reference policies for the gym_cards envs: exact where the game allows it.

Used by the tests (oracle success rates), by benchmarks, and to generate SFT data (frames with correct answers):

- `number_line_oracle`: the shortest path to the target (always succeeds).
- `solve_points`: an exact solver for the points games (EZPoints, Points24), under either rule set of the envs;
  `points_expert_action` types its solution token by token and then presses ``=``.
- `blackjack_basic_strategy`: standard hit/stand basic strategy against the dealer's up card.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from fractions import Fraction

from .cards import POINTS_OPERATORS, points_action_names
from .formula import BLANK, DEFAULT_RULES, MAX_POWER_BITS, check_rules, formula_equals


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
    rules: str = DEFAULT_RULES,
) -> list[str] | None:
    """A formula that uses each of ``numbers`` exactly once and equals ``target``, as tokens; `None` if none exists.

    Exact: searches every way to combine the numbers with the ``operators`` and any parenthesization, in
    `fractions.Fraction` arithmetic (so ``[3, 3, 8, 8]`` gives ``["8", "/", "(", "3", "-", "8", "/", "3", ")"]``).
    With ``parentheses=False`` only formulas that need no parentheses count. Results are cached per multiset of
    numbers, so solving many deals is cheap.

    ``rules="rl4vlm"`` (the envs' RL4VLM rule set): the tokens are action names that win under
    `vlm_env_ppo.envs.formula.evaluate_rl4vlm`. The exact solution is kept when it also wins there (floats can
    break it: ``8/(3-8/3)`` is 23.99999999999999); otherwise a search that adds what RL4VLM's ``eval`` read into
    the tokens: numbers typed side by side (``["2", "4"]`` is 24), ``**`` (typed ``*`` ``*``, when ``*`` is an
    operator) and ``//`` (``/`` ``/``), all in Python's int/float arithmetic. It does not try unary minus or
    complex intermediates, so under ``"rl4vlm"`` a `None` means no formula of that (large) family wins.

    >>> solve_points([3, 3, 8, 8], 24)
    ['8', '/', '(', '3', '-', '8', '/', '3', ')']
    >>> solve_points([1, 1, 1, 1], 24) is None
    True
    >>> solve_points([2, 4, 1, 1], 24, rules="rl4vlm")  # no exact solution; "1+24-1" wins under RL4VLM's eval
    ['1', '+', '2', '4', '-', '1']
    >>> solve_points([3, 3, 8, 8], 24, rules="rl4vlm")  # 8/(3-8/3) is 23.99999999999999 in floats
    ['3', '+', '8', '*', '8', '/', '/', '3']
    """
    key = tuple(sorted(int(n) for n in numbers))
    ops = tuple(op for op in ("+", "-", "*", "/") if op in operators)
    tokens = _solve_sorted(key, Fraction(target), ops, bool(parentheses))
    if check_rules(rules) == "rl4vlm":
        # The exact solution is kept where RL4VLM's floats agree; no exact solution, or a lost one: search its rules.
        if tokens is None or not formula_equals(tokens, target, "rl4vlm"):
            tokens = _solve_rl4vlm_sorted(key, int(target), ops, bool(parentheses))
    return None if tokens is None else list(tokens)


# ---------------------------------------------------------------------------------------------------- rl4vlm search
# Trees: a leaf is the tuple of card numbers typed side by side (one card, or several read as one literal: (2, 4) is
# 24); a node is (op, left, right) with op among + - * / // **. Values are Python's int/float, computed as
# `evaluate_rl4vlm` does; each subset of the cards keeps one tree per distinct value (type and value: 24 and 24.0
# differ under // and ** in general), so the search is a dynamic programme over sub-multisets.
_PYTHON_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "**": 4}
_LEAF_PRECEDENCE = 5


def _rl4vlm_ops(operators: tuple[str, ...]) -> tuple[str, ...]:
    """The binary operations RL4VLM's ``eval`` reads from the typed operators, ordinary ones first."""
    extra = (("**",) if "*" in operators else ()) + (("//",) if "/" in operators else ())
    return operators + extra


def _python_apply(op: str, left, right):
    """``left op right`` as `evaluate_rl4vlm` computes it; `None` where it is invalid, complex or not finite."""
    if op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if right > MAX_POWER_BITS or right * math.log2(abs(left)) > MAX_POWER_BITS:
            return None
    try:
        if op == "+":
            value = left + right
        elif op == "-":
            value = left - right
        elif op == "*":
            value = left * right
        elif op == "/":
            value = left / right
        elif op == "//":
            value = left // right
        else:
            value = left**right
    except (ArithmeticError, TypeError, ValueError):
        return None
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _rl4vlm_tokens(tree) -> list[str]:
    """The action names that type ``tree``, with the parentheses Python needs to keep its order of operations
    (floats are not associative: ``a + (b - c)`` keeps its parentheses here)."""
    if not isinstance(tree[0], str):
        return [str(n) for n in tree]
    op, left, right = tree
    left_tokens, right_tokens = _rl4vlm_tokens(left), _rl4vlm_tokens(right)
    prec = _PYTHON_PRECEDENCE[op]
    left_prec = _LEAF_PRECEDENCE if not isinstance(left[0], str) else _PYTHON_PRECEDENCE[left[0]]
    right_prec = _LEAF_PRECEDENCE if not isinstance(right[0], str) else _PYTHON_PRECEDENCE[right[0]]
    if left_prec < prec or (op == "**" and left_prec == prec):  # ** is right-associative: (a**b)**c
        left_tokens = ["(", *left_tokens, ")"]
    if right_prec < prec or (op != "**" and right_prec == prec):
        right_tokens = ["(", *right_tokens, ")"]
    return [*left_tokens, *op, *right_tokens]  # "**" is typed "*", "*"; "//" is "/", "/"


def _sub_multisets(cards: tuple[int, ...]):
    """Each way to split the sorted ``cards`` into two non-empty sorted parts, once per pair of multisets."""
    seen = set()
    for mask in range(1, 2 ** len(cards) - 1):
        left = tuple(c for i, c in enumerate(cards) if mask >> i & 1)
        right = tuple(c for i, c in enumerate(cards) if not mask >> i & 1)
        if (right, left) not in seen and (left, right) not in seen:
            seen.add((left, right))
            yield left, right


def _literals(cards: tuple[int, ...]):
    """(value, leaf) of every order of ``cards`` typed side by side (one literal, e.g. 1 and 13 give 113 and 131)."""
    for order in sorted(set(itertools.permutations(cards))):
        yield int("".join(str(n) for n in order)), order


def _combinations(cards: tuple[int, ...], ops: tuple[str, ...]):
    """(value, tree) of every formula over ``cards`` (literals last), from the cached values of the two parts."""
    for left_cards, right_cards in _sub_multisets(cards):
        left_values, right_values = _rl4vlm_values(left_cards, ops), _rl4vlm_values(right_cards, ops)
        for left_value, left_tree in left_values.values():
            for right_value, right_tree in right_values.values():
                for op in ops:
                    for a, ta, b, tb in ((left_value, left_tree, right_value, right_tree),
                                         (right_value, right_tree, left_value, left_tree)):  # fmt: skip
                        value = _python_apply(op, a, b)
                        if value is not None:
                            yield value, (op, ta, tb)
                        if op in ("+", "*"):
                            break  # commutative in floats too
    if len(cards) > 1:
        yield from _literals(cards)


@functools.lru_cache(maxsize=4096)
def _rl4vlm_values(cards: tuple[int, ...], ops: tuple[str, ...]) -> dict:
    """One (value, tree) per distinct (type, value) made from the sorted ``cards`` (cached per sub-multiset)."""
    if len(cards) == 1:
        return {(int, cards[0]): (cards[0], (cards[0],))}
    values: dict = {}
    for value, tree in _combinations(cards, ops):
        values.setdefault((type(value), value), (value, tree))
    return values


@functools.lru_cache(maxsize=65536)
def _solve_rl4vlm_sorted(numbers: tuple[int, ...], target: int, operators: tuple[str, ...], parentheses: bool):
    ops = _rl4vlm_ops(operators)
    for value, tree in _combinations(numbers, ops):
        if value == target:
            tokens = _rl4vlm_tokens(tree)
            # The printed formula is checked by the env's own evaluator (and the parentheses rule): the search's
            # values and the typed text must agree, never assumed.
            if (parentheses or "(" not in tokens) and formula_equals(tokens, target, "rl4vlm"):
                return tuple(tokens)
    return None


def default_points_action_names(info: dict) -> tuple[str, ...]:
    """The action names of the env that produced ``info``, for the default env arguments.

    Two cards: EZPoints (``+``, ``*``); otherwise Points24 (``+ - * / ( )``). Numbers go up to 13 when a card is
    worth more than 10 (``treat_face_cards_as_10=False``). Pass ``env.unwrapped.action_names`` instead to be exact.
    """
    numbers = [int(n) for n in info["Numbers"]]
    max_number = 13 if max(numbers) > 10 else 10
    operators = ("+", "*") if len(numbers) == 2 else POINTS_OPERATORS
    return points_action_names(max_number, operators)


def points_expert_action(
    info: dict, target: int | None = None, action_names: Sequence[str] | None = None, rules: str | None = None
) -> int:
    """The next action of an expert for EZPoints / Points24, from the env's ``info``.

    The expert solves the deal (`solve_points` over ``info["Numbers"]`` with the operators the env offers, under the
    env's rule set), types the solution token by token, then presses ``=``. Blanks (what the env appends for an
    invalid number) are not part of the solution; the expert goes on only while the formula typed so far, blanks
    included, still wins once the rest of the solution is typed (under ``"rl4vlm"`` a blank between ``2`` and ``4``
    breaks the 24). Otherwise, or when the deal has no solution, it presses ``=`` at once: the game has no undo, so
    nothing can be rescued.

    Args:
        info (`dict`): the env's ``info`` with ``"Numbers"`` and ``"Formula"`` (and ``"target"``, ``"rules"``).
        target (`int`, *optional*): defaults to ``info["target"]``.
        action_names (`Sequence[str]`, *optional*): the env's action names (``env.unwrapped.action_names``);
            defaults to `default_points_action_names`.
        rules (`str`, *optional*): the env's rule set; defaults to ``info["rules"]``, else ``"exact"``.
    """
    if target is None:
        target = info["target"]
    if action_names is None:
        action_names = default_points_action_names(info)
    if rules is None:
        rules = info.get("rules", DEFAULT_RULES)
    names = list(action_names)
    operators = [op for op in ("+", "-", "*", "/") if op in names]
    solution = solve_points(info["Numbers"], target, operators, parentheses="(" in names, rules=rules)
    formula = [str(token) for token in info.get("Formula", [])]
    typed = [token for token in formula if token != BLANK]
    if solution is None or typed != solution[: len(typed)] or len(typed) == len(solution):
        return names.index("=")
    if len(typed) < len(formula) and not formula_equals(formula + solution[len(typed) :], target, rules):
        return names.index("=")  # a blank broke the solution (only under "rl4vlm": "exact" skips blanks)
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
