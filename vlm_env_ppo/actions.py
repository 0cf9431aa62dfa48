"""Map a model's text output to a legal env action: ``ParsedAction`` and ``parse_action`` (never raises).

The paper (RL4VLM) looks at the text after the ``"action":`` key: if exactly one legal action
appears there it is played, otherwise the output is invalid (and the trainer plays a random action and/or applies a
penalty — a config choice). This module does the same, more carefully than RL4VLM's ``text_projection``:

- the *last* action key wins (a model that rewrites its answer is judged on its final one);
- action names are matched as whole tokens, so ``"10"`` does not also count as ``"1"`` and ``"stand"`` is not
  found in ``"standing"`` — without RL4VLM's special case for ``10``;
- a repeated symbol such as ``"++"`` is two actions, hence invalid;
- the character offset of the key is returned (``action_start``), so the trainer can split chain-of-thought and
  action tokens for any tokenizer (see `vlm_env_ppo.logprobs.action_token_index`).
"""

from __future__ import annotations

import functools
import numbers
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass


# Completions are short (paper: max_new_tokens 256, about 1k characters). Only the tail is scanned so that parsing
# stays cheap whatever the input; the last action key is the one that counts, so the tail is where it lives.
MAX_SCAN_CHARS = 16_384
# The value of the action key is read for at most this many characters (a quoted value with no closing quote, e.g.
# a completion cut by max_new_tokens, ends there).
MAX_VALUE_CHARS = 256

# `"action":`, `'action':` or bare `action:` (case-insensitive, ASCII only so that Unicode case folding cannot turn
# other letters into a key), not part of a longer word such as `next_action` or `actions`.
_KEY_RE = re.compile(r"""(?<!\w)(["']?)[aA][cC][tT][iI][oO][nN]\1\s*:""")
_VALUE_END = ",}\n"
_STRIP_CHARS = " \t\r\n\"'`“”‘’"  # whitespace and (smart) quotes around a value


@dataclass(frozen=True)
class ParsedAction:
    """The result of parsing one completion.

    Args:
        action (`int` or `None`):
            Index into the task's ``action_names`` of the parsed action; `None` when the output is invalid.
        valid (`bool`):
            Whether exactly one legal action was found after the action key. When `False` the trainer decides what
            to play (random action and/or penalty; see `VLMPPOConfig`).
        action_start (`int` or `None`):
            Character offset in the completion where the action part begins: the first character of the last action
            key (its opening quote for ``"action":``, else the ``a``), so ``completion[action_start:]`` starts with
            ``"action"`` (case-insensitively). `None` when no action key was found. It is set even when the value is
            invalid, so the thoughts before it still get the chain-of-thought weight λ.
        reason (`str`, *optional*, defaults to `""`):
            Why the output is (in)valid, for logging fallback causes: ``"ok"``, ``"not_text"`` (the completion is not
            a `str`), ``"no_action_key"``, ``"no_legal_action"`` (the value names no legal action, e.g. empty or
            truncated) or ``"multiple_actions"`` (several actions, or one action more than once).
    """

    action: int | None
    valid: bool
    action_start: int | None
    reason: str = ""


def parse_action(completion: str, action_names: Sequence[str]) -> ParsedAction:
    """Parse the action from a completion such as ``{"thoughts": "...", "action": "+"}``. Never raises.

    The value after the last action key (``"action":``, ``'action':`` or ``action:``, any case) is read: a quoted
    string up to its closing quote (or up to the end of the text, when the output was cut), plus anything after it up
    to ``,``, ``}`` or a newline; or a bare token up to ``,``, ``}`` or a newline. It is valid when

    - the value, stripped of whitespace and quotes, equals an action name (case-sensitively first, then
      case-insensitively) and the text after its closing quote names no other action; or
    - exactly one legal action name occurs in the value (and that text) exactly once, as a whole token.

    Text before the key (the thoughts, which mention many actions) is never used to guess an action.

    Args:
        completion (`str`):
            The decoded completion. Any other type gives an invalid result with reason ``"not_text"``.
        action_names (`Sequence[str]`):
            The env's action names in index order, e.g. ``("stand", "hit")``. Entries that are not non-empty strings
            are never matched.

    Returns:
        `ParsedAction`

    Example:

    ```python
    >>> parse_action('{"thoughts": "7 < 12, so hit or stand? hit.", "action": "Hit"}', ["stand", "hit"])
    ParsedAction(action=1, valid=True, action_start=46, reason='ok')
    >>> parse_action('{"action": "10"}', [str(i) for i in range(1, 11)]).action
    9

    ```
    """
    if not isinstance(completion, str):
        return ParsedAction(None, False, None, "not_text")
    names = _clean_names(action_names)

    offset = max(0, len(completion) - MAX_SCAN_CHARS)
    text = completion[offset:]
    key = None
    for key in _KEY_RE.finditer(text):
        pass
    if key is None:
        return ParsedAction(None, False, None, "no_action_key")
    action_start = offset + key.start()

    value, tail = _read_value(text, key.end())
    action, reason = _match(value, tail, names)
    return ParsedAction(action, action is not None, action_start, reason)


def _clean_names(action_names) -> tuple[str | None, ...]:
    """The names as a tuple, with unusable entries (not a non-empty `str`) replaced by `None`."""
    try:
        return tuple(n if isinstance(n, str) and n.strip() else None for n in action_names)
    except TypeError:  # not iterable: no legal action can be found, which gives an invalid result
        return ()


def _read_value(text: str, start: int) -> tuple[str, str]:
    """Read the value that starts at ``text[start:]`` (after the colon).

    Returns ``(value, tail)``: for a quoted value, its unescaped content and the text after the closing quote up to
    the end of the value (so ``"-" or "+"`` keeps both actions and is found ambiguous); for a bare value, the token
    and an empty tail.
    """
    i, n = start, len(text)
    while i < n and text[i] in " \t\r":
        i += 1
    end = min(n, i + MAX_VALUE_CHARS)
    if i < n and text[i] in "\"'":
        quote, chars = text[i], []
        i += 1
        while i < end and text[i] != quote:
            if text[i] == "\\" and i + 1 < end:  # JSON escapes: keep \" and \\ literally, others become a separator
                i += 1
                chars.append(text[i] if text[i] in "\"'\\/" else " ")
            else:
                chars.append(text[i])
            i += 1
        tail_start = i + 1  # past the closing quote (or past the end when there is none)
        return "".join(chars), _until_value_end(text, tail_start, min(n, tail_start + MAX_VALUE_CHARS))
    return _until_value_end(text, i, end), ""


def _until_value_end(text: str, start: int, end: int) -> str:
    """``text[start:end]`` cut at the first ``,``, ``}`` or newline."""
    for j in range(start, end):
        if text[j] in _VALUE_END:
            return text[start:j]
    return text[start:end]


def _match(value: str, tail: str, names: tuple[str | None, ...]) -> tuple[int | None, str]:
    """Return ``(index or None, reason)`` for the value (and tail) of the action key."""
    exact = _exact_match(value, names)
    tail_hits = _find_names(tail, names)
    if exact is not None and all(hit == exact for hit in tail_hits):  # `"hit" (I hit)` is fine, `"-" or "+"` not
        return exact, "ok"
    hits = _find_names(value, names) + tail_hits
    if not hits:
        return None, "no_legal_action"
    if len(hits) > 1:  # two different actions, or the same one twice ("++")
        return None, "multiple_actions"
    return hits[0], "ok"


def _exact_match(value: str, names: tuple[str | None, ...]) -> int | None:
    """Index of the name equal to the stripped value: case-sensitively first, then case-insensitively."""
    stripped = value.strip(_STRIP_CHARS)
    if not stripped:
        return None
    if stripped in names:
        return names.index(stripped)
    folded = stripped.casefold()
    for index, name in enumerate(names):
        if name is not None and name.strip(_STRIP_CHARS).casefold() == folded:
            return index
    return None


def _find_names(text: str, names: tuple[str | None, ...]) -> list[int]:
    """Indices of the action names occurring in ``text`` as whole tokens, one entry per occurrence.

    Occurrences do not overlap and the longest name wins at a position, so with names ``1`` and ``10`` the text
    ``10`` is one occurrence of ``10``. A name that starts (ends) with a word character must not be preceded
    (followed) by one, so ``1`` is not found in ``10`` or ``x1`` and ``hit`` not in ``white``.
    """
    if not text or not names:
        return []
    pattern, lookup = _names_pattern(names)
    if pattern is None:
        return []
    return [lookup[m.group(0)] for m in pattern.finditer(text.casefold())]


@functools.lru_cache(maxsize=64)
def _names_pattern(names: tuple[str | None, ...]) -> tuple[re.Pattern | None, dict[str, int]]:
    """One alternation regex over the case-folded names (longest first) and a map from folded name to index."""
    lookup: dict[str, int] = {}
    for index, name in enumerate(names):
        if name is not None:
            lookup.setdefault(name.strip(_STRIP_CHARS).casefold() or name.casefold(), index)
    if not lookup:
        return None, lookup
    alternatives = []
    for name in sorted(lookup, key=len, reverse=True):
        before = r"(?<!\w)" if re.match(r"\w", name[0]) else ""
        after = r"(?!\w)" if re.match(r"\w", name[-1]) else ""
        alternatives.append(before + re.escape(name) + after)
    return re.compile("|".join(alternatives)), lookup


def checked_parse(parse, completion: str, info: dict, num_actions: int) -> tuple[ParsedAction, str | None]:
    """Call a ``parse_action`` hook and check what it returned: ``(parsed, problem)``.

    A hook that raises, returns something other than a `ParsedAction`, or a valid one whose action is not an index in
    ``[0, num_actions)`` gives an invalid `ParsedAction` (reason ``"parse_error"``, ``"not_parsed_action"`` or
    ``"out_of_range"``) and ``problem``, a sentence saying what went wrong, for the caller to count and log; a hook's
    bug is then data, not a crash that loses a run. ``problem`` is `None` when all is well.
    """
    try:
        parsed = parse(completion, info)
    except Exception:  # noqa: BLE001 - a bug in a user hook: counted and logged by the caller
        return ParsedAction(None, False, None, "parse_error"), f"parse_action raised:\n{traceback.format_exc()}"
    if not isinstance(parsed, ParsedAction):
        return ParsedAction(None, False, None, "not_parsed_action"), (
            f"parse_action returned {type(parsed).__name__} {parsed!r:.80}, not a "
            "ParsedAction(action, valid, action_start, reason)"
        )
    if parsed.valid and not (isinstance(parsed.action, numbers.Integral) and 0 <= parsed.action < num_actions):
        return ParsedAction(None, False, parsed.action_start, "out_of_range"), (
            f"parse_action returned action {parsed.action!r}, not an index in [0, {num_actions})"
        )
    return parsed, None
