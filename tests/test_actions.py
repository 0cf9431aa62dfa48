"""`parse_action`: the paper's rule (exactly one legal action after the action key), robustly, and never raising."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm_env_ppo.actions import MAX_SCAN_CHARS, ParsedAction, parse_action
from vlm_env_ppo.tasks import TASKS

NUMBERLINE = ("-", "+")
BLACKJACK = ("stand", "hit")
POINTS24 = tuple(str(i) for i in range(1, 11)) + ("+", "-", "*", "/", "(", ")", "=")


def assert_key_at(completion: str, parsed: ParsedAction):
    assert parsed.action_start is not None
    assert completion[parsed.action_start :].lower().startswith(('"action"', "'action'", "action"))


# A text game's step (TextWorld, ALFWorld): the legal commands come with the info; the other tasks ignore it.
TEXT_GAME_INFO = {"admissible_commands": ["go to fridge 1", "open fridge 1", "take apple 1 from countertop 1", "look"]}


# ------------------------------------------------------------------ prompt and parser agree
@pytest.mark.parametrize("env_id", sorted(TASKS))
@pytest.mark.parametrize("action_only", [False, True])
def test_every_builtin_action_round_trips(env_id, action_only):
    task = TASKS[env_id]
    legal = task.legal_actions(TEXT_GAME_INFO)  # MiniGrid's navigation tasks offer 3 of their 7 actions
    for name in legal:
        answer = task.example_answer(name, thoughts="Thinking about it.", action_only=action_only)
        parsed = task.parse_action(answer, TEXT_GAME_INFO)
        expected = task.action_names.index(name) if task.action_names else legal.index(name)  # text: the command's
        assert parsed == ParsedAction(expected, True, answer.index('"action"'), "ok"), answer
    for name in set(task.action_names or ()) - set(legal):  # named but not offered: invalid
        assert not task.parse_action(task.example_answer(name, action_only=action_only)).valid


# ------------------------------------------------------------------ value matching
@pytest.mark.parametrize(
    "value, expected",
    [("10", 9), ("1", 0), (" 10 ", 9), ("1 10", None), ("0", None), ("10.", 9), ("x10", None), ("10 or 1", None)],
)
def test_ten_is_not_one(value, expected):
    parsed = parse_action(json.dumps({"action": value}), POINTS24)
    assert parsed.action == expected
    assert parsed.valid == (expected is not None)


@pytest.mark.parametrize(
    "completion",
    [
        '{"action": "hit"}',
        '{"action": "Hit"}',
        '{"ACTION": "HIT"}',
        '{"Action":"hit"}',
        '{"action" :   "  hit  "}',
        "{'action': 'hit'}",
        "{action: hit}",
        "action: hit",
        '{"action": hit}',
        '{"action": "hit."}',
        '{"action": ["hit"]}',
        '{"action": "\\"hit\\""}',
        '{"action": “hit”}',
        '{\n  "thoughts": "x",\n  "action": "hit"\n}',
        '```json\n{"thoughts": "x", "action": "hit"}\n```',
        '{"action": "I will hit"}',
    ],
)
def test_quote_case_whitespace_variants(completion):
    parsed = parse_action(completion, BLACKJACK)
    assert (parsed.action, parsed.valid, parsed.reason) == (1, True, "ok")
    assert_key_at(completion, parsed)


@pytest.mark.parametrize("symbol, index", [(s, i) for i, s in enumerate(POINTS24) if i >= 10])
def test_symbols(symbol, index):
    assert parse_action(f'{{"thoughts": "", "action": "{symbol}"}}', POINTS24).action == index
    assert parse_action(f'{{"action": " {symbol} "}}', POINTS24).action == index


def test_multi_char_names_are_whole_tokens():
    assert parse_action('{"action": "standing"}', BLACKJACK).reason == "no_legal_action"
    assert parse_action('{"action": "white"}', BLACKJACK).reason == "no_legal_action"
    assert parse_action('{"action": "stand"}', BLACKJACK).action == 0


# ------------------------------------------------------------------ truncated outputs
@pytest.mark.parametrize(
    "completion, action, reason",
    [
        ('{"thoughts": "go up", "action": "hi', None, "no_legal_action"),
        ('{"thoughts": "go up", "action": "hit', 1, "ok"),
        ('{"thoughts": "go up", "action": "', None, "no_legal_action"),
        ('{"thoughts": "go up", "action":', None, "no_legal_action"),
        ('{"thoughts": "go up", "action": "stand', 0, "ok"),
        ('{"thoughts": "go up", "action": st', None, "no_legal_action"),
    ],
)
def test_truncated_outputs(completion, action, reason):
    parsed = parse_action(completion, BLACKJACK)
    assert (parsed.action, parsed.valid, parsed.reason) == (action, action is not None, reason)
    assert parsed.action_start == completion.index('"action"')


def test_truncated_key_is_no_key():
    parsed = parse_action('{"thoughts": "I should hit", "act', BLACKJACK)
    assert parsed == ParsedAction(None, False, None, "no_action_key")
    assert parse_action('{"thoughts": "I should hit", "action"', BLACKJACK).reason == "no_action_key"


# ------------------------------------------------------------------ invalid outputs
@pytest.mark.parametrize(
    "completion, names",
    [
        ('{"action": "++"}', NUMBERLINE),
        ('{"action": "+-"}', NUMBERLINE),
        ('{"action": "+ or -"}', NUMBERLINE),
        ('{"action": "-" or "+"}', NUMBERLINE),  # the template copied verbatim
        ('{"action": "hit or stand"}', BLACKJACK),
        ('{"action": "hit hit"}', BLACKJACK),
        ('{"action": "10+2"}', POINTS24),
        ('{"action": "(3)"}', POINTS24),
    ],
)
def test_multiple_actions_are_invalid(completion, names):
    parsed = parse_action(completion, names)
    assert (parsed.action, parsed.valid, parsed.reason) == (None, False, "multiple_actions")
    assert parsed.action_start == 1


@pytest.mark.parametrize(
    "completion", ["", "hit", "I would hit here. + - stand", '{"thoughts": "hit", "act": "hit"}', '{"actions": "hit"}']
)
def test_no_action_key_is_invalid(completion):
    assert parse_action(completion, BLACKJACK) == ParsedAction(None, False, None, "no_action_key")


@pytest.mark.parametrize("completion", [None, b'{"action": "hit"}', 3, ["hit"]])
def test_non_text_is_invalid(completion):
    assert parse_action(completion, BLACKJACK) == ParsedAction(None, False, None, "not_text")


def test_weird_action_names_do_not_raise():
    for names in ([], ["", " "], [None, 3, "hit"], "sh", (["x"],)):
        parsed = parse_action('{"action": "hit"}', names)
        assert parsed.action_start == 1
    assert parse_action('{"action": "hit"}', [None, 3, "hit"]).action == 2


def test_exact_match_prefers_case_sensitive_name():
    assert parse_action('{"action": "a"}', ["A", "a"]).action == 1
    assert parse_action('{"action": "A"}', ["A", "a"]).action == 0


# ------------------------------------------------------------------ which key, and where
def test_thoughts_mentioning_other_actions_are_ignored():
    completion = '{"thoughts": "stand is safe, hit is risky; 10, 1, +, - all fine", "action": "hit"}'
    assert parse_action(completion, BLACKJACK).action == 1
    assert parse_action(completion.replace("hit\"}", '+"}'), POINTS24).action == POINTS24.index("+")


def test_last_action_key_wins():
    completion = '{"action": "stand"} Wait, let me reconsider. {"thoughts": "17 is low", "action": "hit"}'
    parsed = parse_action(completion, BLACKJACK)
    assert parsed.action == 1
    assert parsed.action_start == completion.rindex('"action"')


def test_action_start_points_at_the_key():
    for completion in [
        '{"thoughts": "x", "action": "hit"}',
        '{"thoughts": "x", "Action": "hit"}',
        "{'thoughts': 'x', 'action': 'hit'}",
        "thoughts: x\naction: hit",
        '{"thoughts": "the \\"action\\": stand", "action": "hit"}',  # an escaped key inside a string is not a key
    ]:
        parsed = parse_action(completion, BLACKJACK)
        assert parsed.action == 1, completion
        assert_key_at(completion, parsed)
        assert completion[parsed.action_start :].lstrip("\"'").lower().startswith("action")


def test_action_start_is_an_offset_into_the_full_text_of_long_inputs():
    completion = "x" * (3 * MAX_SCAN_CHARS) + '{"action": "hit"}'
    parsed = parse_action(completion, BLACKJACK)
    assert parsed.action == 1
    assert parsed.action_start == 3 * MAX_SCAN_CHARS + 1


# ------------------------------------------------------------------ properties
names_strategy = st.lists(st.text(min_size=0, max_size=6), min_size=0, max_size=12)
text_strategy = st.one_of(
    st.text(max_size=400),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=400),
    st.lists(st.sampled_from(['"action"', "'action'", "action", ":", '"', "'", "\\", ",", "}", "{", "\n", " ", "10",
                              "1", "+", "hit", "Hit", "ACTION", "“", "ß"]), max_size=60).map("".join),
)


def check_invariants(completion, names):
    parsed = parse_action(completion, names)
    assert isinstance(parsed, ParsedAction)
    assert parsed.action_start is None or 0 <= parsed.action_start < len(completion)
    if parsed.valid:
        assert parsed.action is not None and 0 <= parsed.action < len(names)
        assert parsed.reason == "ok"
    else:
        assert parsed.action is None and parsed.reason != "ok"
    if parsed.action_start is not None:
        assert completion[parsed.action_start :].lstrip("\"'").lower().startswith("action")
    return parsed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion=text_strategy, names=names_strategy)
def test_never_raises_on_arbitrary_text(completion, names):
    check_invariants(completion, names)


@settings(max_examples=300, deadline=None)
@given(completion=text_strategy, names=names_strategy)
def test_never_raises_after_an_action_key(completion, names):
    check_invariants('{"thoughts": "x", "action": ' + completion, names)


@settings(max_examples=200, deadline=None)
@given(
    env_id=st.sampled_from(sorted(TASKS)),
    data=st.data(),
    thoughts=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200).filter(
        lambda t: "action" not in t.lower()
    ),
    action_only=st.booleans(),
)
def test_example_answer_round_trips(env_id, data, thoughts, action_only):
    task = TASKS[env_id]
    legal = task.legal_actions(TEXT_GAME_INFO)
    name = data.draw(st.sampled_from(legal))
    answer = task.example_answer(name, thoughts=thoughts, action_only=action_only)
    parsed = task.parse_action(answer, TEXT_GAME_INFO)
    assert (parsed.action, parsed.valid) == (task.action_names.index(name) if task.action_names else legal.index(name),
                                             True)
    assert parsed.action_start == answer.rindex('"action"')


@settings(max_examples=100, deadline=None)
@given(
    names=st.lists(st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=8), min_size=1,
                   max_size=10, unique_by=str.casefold),
    data=st.data(),
)
def test_generic_names_round_trip(names, data):
    index = data.draw(st.integers(0, len(names) - 1))
    parsed = parse_action(json.dumps({"thoughts": "...", "action": names[index]}, ensure_ascii=False), names)
    assert (parsed.action, parsed.valid) == (index, True)


@pytest.mark.parametrize(
    "completion",
    [
        '"action":' * (10**6 // 9),
        '"action": "' * 120_000,
        '"' * 10**6,
        "'" * 10**6 + "action:" + "'" * 10**6,
        "action:" + " " * 10**6,
        '{"action": "' + "+" * 10**6,
        '{"action": "' + "\\" * 10**6,
        "a" * 10**6,
        "action" * 200_000,
    ],
)
def test_bounded_time_on_adversarial_inputs(completion):
    start = time.perf_counter()
    parsed = parse_action(completion, POINTS24)
    assert time.perf_counter() - start < 1.0
    assert not parsed.valid


def test_bounded_time_with_many_action_names():
    names = [f"action_{i}" for i in range(2000)] + ["+"] * 10
    completion = '{"action": "' + " ".join(names[:50]) * 2 + '"}'
    start = time.perf_counter()
    for _ in range(20):
        parse_action(completion, names)
    assert time.perf_counter() - start < 2.0


def test_text_after_the_quoted_value():
    assert parse_action('{"action": "hit" (I hit because 12 is low)}', BLACKJACK).action == 1
    assert parse_action('{"action": "hit" not stand}', BLACKJACK).reason == "multiple_actions"
    assert parse_action('{"action": "hit"}, "note": "stand was worse"}', BLACKJACK).action == 1
