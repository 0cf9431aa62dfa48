"""The safe formula evaluator: exact values, `None` for anything invalid, never an exception, bounded work."""

import math
import time
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vlm_env_ppo.envs.formula import (
    HARD_MAX_DEPTH,
    MAX_DEPTH,
    MAX_FORMULA_LENGTH,
    MAX_POWER_BITS,
    RULES,
    check_rules,
    evaluate,
    evaluate_rl4vlm,
    formula_equals,
    join_formula,
    tokenize,
)


@pytest.mark.parametrize(
    "formula, value",
    [
        ("8/(3-8/3)", Fraction(24)),
        (["8", "/", "(", "3", "-", "8", "/", "3", ")"], Fraction(24)),
        ("1 + 2 * 3", Fraction(7)),
        ("(1 + 2) * 3", Fraction(9)),
        ("10 - 4 - 3", Fraction(3)),  # left-associative
        ("8 / 4 / 2", Fraction(1)),
        ("1 / 3", Fraction(1, 3)),
        ("-3 + 5", Fraction(2)),  # unary minus, as Python's eval allowed for RL4VLM
        ("- - 2", Fraction(2)),
        ("((((7))))", Fraction(7)),
        ([" ", "6", " ", "*", "2", " "], Fraction(12)),  # blanks (invalid numbers in the envs) are skipped
        ([10, "+", 2], Fraction(12)),
        ("007", Fraction(7)),
    ],
)
def test_values_are_exact(formula, value):
    result = evaluate(formula)
    assert isinstance(result, Fraction) and result == value


@pytest.mark.parametrize(
    "formula",
    [
        "",
        " ",
        [],
        [" ", " "],
        "1/0",
        "6/(4-4)",
        "1/(2-2)*3",
        "(1+2",
        "1+2)",
        "1+",
        "*1",
        "2**3",
        "2//3",
        "()",
        "1 2",
        ["1", "0"],
        ["2", "4"],
        "2(3)",
        "(2)(3)",
        "1.5",
        "3e2",
        "abs(1)",
        "__import__('os')",
        "1+2;",
        ["1", "+", "x"],
        ["1+2"],
        [True, "+", 1],
        [-1, "+", 2],
        [1.5],
        None,
        12,
        b"1+2",
        {"1": 2},
        ["١٢"],
        "²",
        "1" * 13,  # a literal longer than MAX_NUMBER_DIGITS
    ],
)
def test_invalid_formulas_give_none(formula):
    assert evaluate(formula) is None


def test_caps_on_length_and_depth():
    assert evaluate("1" + "+1" * 100) == 101
    assert evaluate("1" + "+1" * MAX_FORMULA_LENGTH) is None  # over the length cap
    assert evaluate(["1"] + ["+", "1"] * MAX_FORMULA_LENGTH) is None
    nested = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert evaluate(nested) == 1
    assert evaluate("(" + nested + ")") is None  # over the depth cap
    assert evaluate("-" * (MAX_DEPTH + 1) + "1") is None  # unary chains count as depth
    assert tokenize("x" * (MAX_FORMULA_LENGTH + 1)) is None
    deep = "(" * (HARD_MAX_DEPTH + 1) + "1" + ")" * (HARD_MAX_DEPTH + 1)
    assert (
        evaluate(deep, max_length=10**6, max_depth=10**9) is None
    )  # a caller's depth is clamped, never a RecursionError


def test_adversarial_input_is_fast():
    adversarial = [
        "(" * 100_000,
        "(" * 120 + "1" + ")" * 120,
        "9" * 1_000_000,
        "-" * 200 + "1",
        ["("] * 1_000_000,
        "9" * 12 + "*9" * 10 * 12,
        "1/" * 120 + "1",
        ("12345678912*" * 21)[:-1],
    ]
    for formula in adversarial:
        start = time.perf_counter()
        evaluate(formula)
        evaluate(formula, max_length=10**7, max_depth=10**9)  # caps raised by the caller: still bounded, no raise
        assert time.perf_counter() - start < 3.0  # linear: ~0.5 s for 10^6 tokens; quadratic would take hours


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/() x.\n")) | st.characters(), max_size=300))
def test_never_raises_on_text(text):
    result = evaluate(text)
    assert result is None or isinstance(result, Fraction)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["+", "-", "*", "/", "(", ")", " ", "", "=", "**"]),
            st.integers(-5, 10**15).map(str),
            st.integers(-5, 20),
            st.text(max_size=4),
            st.none(),
            st.booleans(),
            st.floats(allow_nan=True),
        ),
        max_size=300,
    )
)
def test_never_raises_on_token_lists(tokens):
    result = evaluate(tokens)
    assert result is None or isinstance(result, Fraction)


# A reference: random expression trees evaluated by a separate tree walk (no parsing, no eval).
leaves = st.integers(0, 13).map(lambda n: ("num", n))


def extend(children):
    return st.one_of(
        st.tuples(st.sampled_from("+-*/"), children, children),
        st.tuples(st.just("neg"), children),
    )


trees = st.recursive(leaves, extend, max_leaves=12)


class _DivZero(Exception):
    pass


def tree_value(tree):
    if tree[0] == "num":
        return Fraction(tree[1])
    if tree[0] == "neg":
        return -tree_value(tree[1])
    op, left, right = tree
    a, b = tree_value(left), tree_value(right)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise _DivZero
    return a / b


def tree_tokens(tree):
    """Fully parenthesised tokens of ``tree``."""
    if tree[0] == "num":
        return [str(tree[1])]
    if tree[0] == "neg":
        return ["-", "(", *tree_tokens(tree[1]), ")"]
    op, left, right = tree
    return ["(", *tree_tokens(left), ")", op, "(", *tree_tokens(right), ")"]


@settings(max_examples=400, deadline=None)
@given(trees)
def test_agrees_with_a_tree_evaluation(tree):
    tokens = tree_tokens(tree)
    try:
        expected = tree_value(tree)
    except _DivZero:
        expected = None
    assert evaluate(tokens, max_length=10_000, max_depth=10_000) == expected
    assert evaluate(" ".join(tokens), max_length=10_000, max_depth=10_000) == expected


@settings(max_examples=200, deadline=None)
@given(trees)
def test_minimal_parentheses_keep_the_value(tree):
    """The solver's printer (precedence-aware, fewest parentheses) keeps every value."""
    from vlm_env_ppo.envs.solvers import tree_to_tokens

    def to_solver_tree(t):
        if t[0] == "num":
            return t[1]
        if t[0] == "neg":  # the solver's trees have no unary minus: 0 - x
            return ("-", 0, to_solver_tree(t[1]))
        return (t[0], to_solver_tree(t[1]), to_solver_tree(t[2]))

    try:
        expected = tree_value(tree)
    except _DivZero:
        return
    tokens = tree_to_tokens(to_solver_tree(tree))
    assert evaluate(tokens, max_length=10_000, max_depth=10_000) == expected


# ---------------------------------------------------------------------------------------------------- "rl4vlm" rules
@pytest.mark.parametrize(
    "formula, value",
    [
        (["2", "4", "*", "1", "*", "1"], 24),  # adjacent numbers are one literal, as RL4VLM's "".join + eval read them
        (["1", "2"], 12),
        (["10", "10"], 1010),
        (["7", "3", "/", "/", "(", "2", "+", "1", ")"], 24),  # "/" "/" is floor division
        (["2", "*", "*", "3"], 8),  # "*" "*" is a power
        ("2**3**2", 512),  # right-associative
        ("-2**2", -4),  # the power binds tighter than the sign
        ("2**-1", 0.5),  # a negative exponent gives a float
        ("8/(3-8/3)", 23.99999999999999),  # floats: RL4VLM's "=" saw this, not 24
        ("6/4", 1.5),
        ("-7//2", -4),
        ("15//2*2", 14),
        ("(-8)**(1/3)", (-8) ** (1 / 3)),  # complex, as Python made it
        (" 2*6 ", 12),  # eval skipped leading and trailing spaces
        ("00", 0),
        ("1**99999999999", 1),  # |base| <= 1: cheap at any exponent
        ("2**" + str(MAX_POWER_BITS), 2**MAX_POWER_BITS),  # the largest power computed
    ],
)
def test_rl4vlm_values_are_pythons(formula, value):
    result = evaluate_rl4vlm(formula)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    "formula",
    [
        "",
        ["2", " ", "4"],  # a blank between digits separates them: a syntax error, as in RL4VLM
        ["*", " ", "*"],
        "2* *3",
        "2***3",
        "2****3",
        "6///2",
        "1/0",
        "1//0",
        "0**-1",
        "10**400/3",  # OverflowError in Python
        "(2)(3)",  # a call: TypeError in Python
        "2(3)",
        "()",  # the empty tuple never equals a number
        "07",  # Python 3 rejects leading zeros
        "1.5",
        "1\n+2",
        "(-8)**(1/3)//1",  # complex // is a TypeError
        "2**" + str(MAX_POWER_BITS + 1),
        "9**9**9",
        "9**9**9*1",
        "1" * 13,
    ],
)
def test_rl4vlm_invalid_formulas_give_none(formula):
    assert evaluate_rl4vlm(formula) is None


def test_rl4vlm_bound_is_fast_and_loses_no_win():
    for formula in ("9**9**9*1", "13**13**13**13", "2**2**2**2**2**2", "(10**12)**(10**12)", "2**" * 120 + "2"):
        start = time.perf_counter()
        assert evaluate_rl4vlm(formula, max_length=10**4, max_depth=10**4) is None
        assert time.perf_counter() - start < 1.0  # RL4VLM's env was still computing 9**9**9 after 25 s
    # The argument of formula.py: a power of two cards' numbers (<= 13 each) is never over the bound ...
    assert all(evaluate_rl4vlm(f"{a}**{b}") == a**b for a in range(1, 14) for b in range(1, 14))
    assert 13**13 < 2**MAX_POWER_BITS
    # ... and an over-bound power met by one more number (<= 13) cannot come back to a target below 2**4000.
    assert 2**MAX_POWER_BITS // 13 - 1 > 2**4000
    # A power just under the bound is exact, so the targets' neighbourhood is untouched.
    assert evaluate_rl4vlm("2**4096-2**4096+24") == 24


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/() \t")) | st.characters(), max_size=300))
def test_rl4vlm_never_raises_on_text(text):
    result = evaluate_rl4vlm(text)
    assert result is None or isinstance(result, (int, float, complex))


python_trees = st.recursive(
    st.integers(1, 13).map(lambda n: ("num", n)),
    lambda children: st.tuples(st.sampled_from(["+", "-", "*", "/", "//", "**"]), children, children),
    max_leaves=6,
)


class _NearTheBound(Exception):
    """A power within a factor 2 of the bound: the example is skipped (the bound is tested above)."""


def python_tree_value(tree):
    """A tree walk with Python's operators (no parsing, no eval); None where Python raised."""
    if tree[0] == "num":
        return tree[1]
    a, b = python_tree_value(tree[1]), python_tree_value(tree[2])
    if a is None or b is None:
        return None
    op = tree[0]
    try:
        if op == "**":
            if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0:
                if b > MAX_POWER_BITS or b * math.log2(abs(a)) > MAX_POWER_BITS / 2:
                    raise _NearTheBound
            return a**b
        return {"+": a + b, "-": a - b, "*": a * b}[op] if op in "+-*" else (a / b if op == "/" else a // b)
    except (ArithmeticError, TypeError):
        return None


@settings(max_examples=400, deadline=None)
@given(python_trees)
def test_rl4vlm_agrees_with_a_python_tree_walk(tree):
    def text(t):
        return str(t[1]) if t[0] == "num" else f"({text(t[1])}){t[0]}({text(t[2])})"

    try:
        expected = python_tree_value(tree)
    except _NearTheBound:
        assume(False)
    assert evaluate_rl4vlm(text(tree), max_length=10_000, max_depth=10_000) == expected


def test_rules_helpers():
    assert RULES == ("exact", "rl4vlm") and check_rules("rl4vlm") == "rl4vlm"
    for bad in ("foo", None, "RL4VLM", 1):
        with pytest.raises(ValueError, match="'exact', 'rl4vlm'"):
            check_rules(bad)
    tokens = ["2", "4", "*", "1", " ", "*", "1"]
    assert join_formula(tokens, "exact") == "2 4 * 1   * 1" and join_formula(tokens, "rl4vlm") == "24*1 *1"
    assert formula_equals(tokens, 24, "rl4vlm") and not formula_equals(tokens, 24, "exact")
    assert formula_equals("8/(3-8/3)", 24, "exact") and not formula_equals("8/(3-8/3)", 24, "rl4vlm")
