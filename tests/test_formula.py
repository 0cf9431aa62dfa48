"""The safe formula evaluator: exact values, `None` for anything invalid, never an exception, bounded work."""

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_env_ppo.envs.formula import HARD_MAX_DEPTH, MAX_DEPTH, MAX_FORMULA_LENGTH, evaluate, tokenize


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
