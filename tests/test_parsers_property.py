"""Property tests (issue 7) for the two parsers that read untrusted text: the action parser and the formula evaluator.

They never raise, never hang (bounded time on adversarial input of any size), and agree with an independent reference
on valid input: Python's own parser (`ast`, walked by hand, never `eval`) for formulas, `json.loads` for answers.
`tests/test_actions.py` and `tests/test_formula.py` hold the example-based tests and more properties.
"""

import ast
import json
import re
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vlm_env_ppo.actions import ParsedAction, parse_action
from vlm_env_ppo.envs.formula import HARD_MAX_DEPTH, MAX_NUMBER_DIGITS, evaluate
from vlm_env_ppo.tasks import TASKS

TIME_LIMIT = 1.0  # seconds, generous for a loaded 2-core machine; the real cost is milliseconds


# ----------------------------------------------------------------------------------------------- formula evaluator
class _NotArithmetic(Exception):
    pass


def reference_value(text: str) -> Fraction | None:
    """The value of ``text`` as Python reads it, restricted to int literals, unary +/-, and + - * / (exact)."""
    try:
        tree = ast.parse(text.lstrip(" "), mode="eval")  # eval() also ignores leading blanks
    except SyntaxError:
        return None

    def walk(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            value = walk(node.operand)
            return value if isinstance(node.op, ast.UAdd) else -value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if right == 0:
                raise ZeroDivisionError
            return left / right
        raise _NotArithmetic(type(node).__name__)

    try:
        return walk(tree.body)
    except (_NotArithmetic, ZeroDivisionError):
        return None


def comparable(text: str) -> bool:
    """Inputs where Python's reading is the intended one: no leading-zero literals (`07` is a syntax error in Python
    3, 7 here) and no literal longer than the evaluator's digit cap."""
    return not re.search(r"(?<!\d)0\d", text) and all(len(d) <= MAX_NUMBER_DIGITS for d in re.findall(r"\d+", text))


def evaluate_uncapped(text):
    return evaluate(text, max_length=10_000, max_depth=HARD_MAX_DEPTH)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789+-*/() ", max_size=60))
def test_formula_agrees_with_python_on_arbitrary_strings(text):
    """Mostly syntax errors: both must reject the same strings, and agree on the value of the rest."""
    assume(comparable(text))
    assert evaluate_uncapped(text) == reference_value(text)


number = st.integers(0, 10**6).map(str)
space = st.sampled_from(["", " "])


def _combine(children):
    binary = st.tuples(children, space, st.sampled_from("+-*/"), space, children).map("".join)
    parenthesised = st.tuples(st.just("("), space, children, space, st.just(")")).map("".join)
    unary = st.tuples(st.sampled_from("+-"), children).map("".join)
    return st.one_of(binary, parenthesised, unary)


formulas = st.recursive(number, _combine, max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(formulas)
def test_formula_agrees_with_python_on_well_formed_formulas(text):
    assume(comparable(text))
    expected = reference_value(text)
    assert evaluate_uncapped(text) == expected
    if expected is not None:  # the token-sequence form gives the same value
        tokens = re.findall(r"\d+|[-+*/()]", text)
        assert evaluate(tokens, max_length=10_000, max_depth=HARD_MAX_DEPTH) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    piece=st.sampled_from(["(", ")", "-", "+", "9", "99999999999", "*9", "/1", "(1", "1)", "/(", " ", "x"]),
    repeat=st.integers(1, 200_000),
    prefix=st.text(alphabet="0123456789+-*/()", max_size=20),
    suffix=st.text(alphabet="0123456789+-*/()", max_size=20),
)
def test_formula_is_bounded_on_huge_repetitive_input(piece, repeat, prefix, suffix):
    formula = prefix + piece * repeat + suffix
    start = time.perf_counter()
    for candidate in (formula, list(formula), formula[:256]):
        result = evaluate(candidate)
        assert result is None or isinstance(result, Fraction)
    evaluate(formula[:5000], max_length=10**6, max_depth=10**9)  # caller-raised caps are clamped, never recursion
    assert time.perf_counter() - start < TIME_LIMIT


@settings(max_examples=200, deadline=None)
@given(st.integers(1, MAX_NUMBER_DIGITS), st.integers(2, 40))
def test_formula_values_stay_small_enough_to_compute(digits, factors):
    """No exponent operator (``**`` is a syntax error): the largest value under the length cap is a product of
    12-digit literals, computed fast."""
    formula = "*".join(["9" * digits] * factors)[:256].rstrip("*")
    start = time.perf_counter()
    value = evaluate(formula)
    assert value is not None and time.perf_counter() - start < TIME_LIMIT
    assert evaluate(formula.replace("*", "**", 1)) is None


# ----------------------------------------------------------------------------------------------- action parser
# The fixed vocabularies (the text games' commands come per step; their parsing is the generic one, tested below).
names_by_task = st.sampled_from(sorted(k for k, t in TASKS.items() if t.action_names)).map(
    lambda env_id: TASKS[env_id].action_names
)
free_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


def reference_action(answer: str, names) -> int | None:
    """The answer read as JSON: the index of the name equal to its "action" value (case-insensitive, stripped)."""
    value = json.loads(answer)["action"].strip().casefold()
    matches = [i for i, name in enumerate(names) if name.casefold() == value]
    return matches[0] if len(matches) == 1 else None


@settings(max_examples=300, deadline=None)
@given(
    names=names_by_task,
    data=st.data(),
    thoughts=free_text,
    extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k.lower() != "action"), free_text, max_size=3),
    case=st.sampled_from([str, str.upper, str.lower, str.title]),
    pad=st.sampled_from(["", " ", "  "]),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 2]),
)
def test_action_parser_agrees_with_json_on_valid_answers(names, data, thoughts, extra, case, pad, ensure_ascii, indent):
    """Any valid JSON answer whose last key is "action" and whose value is a legal name, in any case and padding,
    with any thoughts (even ones that quote other actions or an "action": key) and any other keys before it."""
    index = data.draw(st.integers(0, len(names) - 1))
    answer = json.dumps(
        {"thoughts": thoughts, **extra, "action": pad + case(names[index]) + pad},
        ensure_ascii=ensure_ascii,
        indent=indent,
    )
    parsed = parse_action(answer, names)
    assert reference_action(answer, names) == index
    assert (parsed.action, parsed.valid, parsed.reason) == (index, True, "ok")
    assert answer[parsed.action_start :].startswith('"action"')


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=names_by_task, data=st.data(), garbage=st.text(max_size=2000))
def test_a_final_answer_is_found_after_any_garbage(names, data, garbage):
    """The last action key wins: whatever a model wrote before its final answer (unclosed quotes, braces, other
    action keys), a well-formed answer at the end is read."""
    index = data.draw(st.integers(0, len(names) - 1))
    parsed = parse_action(garbage + '\n{"action": ' + json.dumps(names[index]) + "}", names)
    assert (parsed.action, parsed.valid) == (index, True)


@settings(max_examples=300, deadline=None)
@given(names=names_by_task, text=free_text.filter(lambda t: "action" not in t.casefold()))
def test_text_without_an_action_key_is_never_an_action(names, text):
    parsed = parse_action(text, names)
    assert parsed == ParsedAction(None, False, None, "no_action_key")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    names=names_by_task,
    piece=st.sampled_from(['"action":', '"action": "', "action:", '"', "'", "\\", "{", "+", "10", "hit ", "a", " "]),
    repeat=st.integers(1, 300_000),
    suffix=st.text(max_size=50),
)
def test_action_parser_is_bounded_on_huge_repetitive_input(names, piece, repeat, suffix):
    completion = piece * repeat + suffix
    start = time.perf_counter()
    parsed = parse_action(completion, names)
    assert time.perf_counter() - start < TIME_LIMIT
    assert isinstance(parsed, ParsedAction) and parsed.valid == (parsed.action is not None)


@settings(max_examples=200, deadline=None)
@given(
    completion=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace"))),
    info=st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.integers(), st.text(max_size=20)), max_size=4),
)
@pytest.mark.parametrize("env_id", sorted(TASKS))
def test_every_task_parser_never_raises(env_id, completion, info):
    """What the trainer calls: the task's parser on decoded text (undecodable bytes become U+FFFD) and any info."""
    parsed = TASKS[env_id].parse_action(completion, info)
    assert parsed.valid == (parsed.action is not None) and parsed.reason
