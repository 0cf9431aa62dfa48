"""Grammar-constrained decoding (`VLMPPOConfig(constrained_decoding=True)`): every completion is an answer the parser
accepts, and PPO scores exactly the distribution it was sampled from.

A step's completion is generated under a grammar, compiled by llguidance (chosen over xgrammar and outlines-core in
``benchmarks/grammar_backends.py``: it compiled an action set in 1–22 ms on this CPU, computed a token mask in
5–8 µs, and never allowed a token it then rejected). For a `Task` the grammar is the JSON answer its prompt asks for
(`GrammarConstraint.answer_grammar`): ``{"thoughts": "<free text>", "action": "<one legal action>"}`` (or
``{"action": ...}``), then EOS. It is written as text, not as token sequences: llguidance matches it byte by byte
and allows every tokenization of an answer, so the tokenizer's own encoding (a pretrained model's habit: ``.",`` and
``▁"+"}`` merge across the boundaries of thoughts, fixed parts and action; SentencePiece begins with ``▁{"``) is
allowed. `AnswerBudget` keeps every completion within ``max_new_tokens``, EOS included, whatever tokens it takes.

Exactness. At every position the policy samples from the softmax at the sampling temperature, restricted to the
tokens the grammar allows there (and not suppressed) and renormalised. `GrammarWalk` decides those tokens, one
position at a time; generation (`GrammarLogitsProcessor`) and scoring (`GrammarConstraint.replay`, from the completion
ids the buffer holds) run the same walk: the rollout scores under the masks generation applied, every update under
their replay, and the reference under the same masks (see `masked_logprobs`, which raises if a scored token lies
outside its mask), all of that distribution. Nothing vocabulary-sized is stored per token: the masks are replayed per
micro-batch.

A walk whose grammar has no allowed token left, or rejects a token (neither happens with the built-in grammars),
continues unconstrained from there, in generation and in replay alike; it is counted (``counts["fallbacks"]``), as
are the steps the built-in grammar cannot constrain (`GrammarConstraint.counts`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

logger = logging.getLogger(__name__)

# `GrammarConstraint.counts`' kinds, logged as `generation/grammar_<kind>` (training) and `eval/grammar_<kind>`.
GRAMMAR_COUNTS = ("constrained_steps", "errors", "fallbacks", "no_fit", "no_legal_action", "actions_left_out")
# The answer's fixed parts, in `json.dumps` layout (`Task.example_answer`, the prompt's template).
COT_PREFIX, COT_MIDDLE, ACTION_ONLY_PREFIX, SUFFIX = '{"thoughts": "', '", "action": "', '{"action": "', '"}'
# A JSON string's characters, with its escapes (Rust regex syntax, inside a Lark /regex/).
JSON_STRING_CHARS = r'(?:[^"\\\x00-\x1f\x7f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})*'


def _import_llguidance():
    try:
        import llguidance
        import llguidance.hf
        import llguidance.numpy
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise ImportError("constrained_decoding needs llguidance: pip install llguidance") from exc
    return llguidance


class AnswerBudget:
    """Keeps every walk through the built-in answer grammar within ``max_new_tokens``, whatever tokens it takes.

    The answer grammar is written as text, so llguidance allows every tokenization of an answer: the tokenizer's own
    (``.",`` and ``▁"+"`` across the boundaries of thoughts, fixed parts and action) and any other, down to one byte
    per token. The number of tokens of the fixed parts is then no longer fixed, so the bound is kept position by
    position instead of by a fixed cap on the thoughts:

    - The *cost* of a state (the bytes taken so far) is the length of one concrete way to finish the answer from it:
      the bytes still pending inside the thoughts (the rest of an escape or of a UTF-8 character, one token per byte),
      then the greedy longest-match tokenization of the shortest remaining text (the thoughts closed at once, the
      cheapest legal action), then EOS.
    - At a position with ``left`` tokens of the budget left, a token is allowed only if the cost after it is at most
      ``left - 1`` (besides the grammar allowing it).

    Greedy longest match is prefix-recursive (its first token, then the greedy tokenization of the rest), so the first
    token of the way that gave a state its cost always passes the test: from a start whose cost fits the budget (the
    condition for an action to be in the grammar, `GrammarConstraint.needed_tokens`), no allowed path is cut before
    its EOS, and the filter never empties a mask. The thoughts run on while there is room to close them (about
    ``max_new_tokens`` less the canonical length of the answer's fixed parts and action). A state costs at most its
    remaining bytes plus the pending ones plus EOS (``window``): before the last ``window`` positions no token is
    filtered. The test is deterministic in the tokens so far, so generation and replay apply the same masks.
    """

    def __init__(self, constraint: GrammarConstraint, legal_actions: Sequence[str], action_only: bool):
        self.constraint = constraint
        self.head = (ACTION_ONLY_PREFIX if action_only else COT_PREFIX).encode()
        self.thoughts = not action_only
        self.tails = tuple(((COT_MIDDLE if self.thoughts else "") + json_inner(a) + SUFFIX).encode()
                           for a in legal_actions)
        self.close_cost = min(constraint.greedy_len(t) for t in self.tails) + 1  # from the thoughts: close, act, EOS
        self.window = 1 + len(self.head) + _MAX_PENDING + max(map(len, self.tails)) + 1

    START = ("head", 0, False)  # (phase, bytes of the head matched, leading space taken)

    def feed(self, state: tuple, data: bytes) -> tuple:
        """The state after the bytes ``data``: ``("head", matched, spaced)``, ``("thoughts", pending kind, bytes)``,
        ``("tail", bytes after the thoughts)`` or ``("dead",)`` (not an answer: the grammar never allows it)."""
        for i, b in enumerate(data):
            phase = state[0]
            if phase == "head":
                matched, spaced = state[1], state[2]
                if matched == 0 and not spaced and b == 0x20:  # SentencePiece vocabularies begin with "▁{"
                    state = ("head", 0, True)
                elif b != self.head[matched]:
                    return ("dead",)
                elif matched + 1 < len(self.head):
                    state = ("head", matched + 1, spaced)
                else:
                    state = ("thoughts", "", 0) if self.thoughts else ("tail", b"")
            elif phase == "thoughts":
                kind, pending = state[1], state[2]
                if kind == "escape":
                    state = ("thoughts", "hex", 4) if b == 0x75 else ("thoughts", "", 0)  # \uXXXX or \n, \", ...
                elif pending:
                    state = ("thoughts", kind, pending - 1) if pending > 1 else ("thoughts", "", 0)
                elif b == 0x22:  # the closing quote: the tail (", "action": "...) starts with it
                    return ("tail", bytes(data[i:]))
                elif b == 0x5C:
                    state = ("thoughts", "escape", 1)
                elif b >= 0xC0:  # a UTF-8 lead byte: 1-3 continuation bytes follow
                    state = ("thoughts", "utf8", 1 if b < 0xE0 else 2 if b < 0xF0 else 3)
            else:  # tail
                return ("tail", state[1] + bytes(data[i:]))
        return state

    def advance(self, state: tuple, token: int) -> tuple:
        return self.feed(state, self.constraint.token_table().token_bytes[token])

    def cost(self, state: tuple) -> float:
        """Tokens of one way to finish from ``state``, EOS included (inf for a dead state)."""
        phase = state[0]
        if phase == "head":
            rest = self.head[state[1]:]
            return min(self.constraint.greedy_len(rest + t) for t in self.tails) + 1
        if phase == "thoughts":
            return state[2] + self.close_cost
        if phase == "tail":
            done = state[1]
            return min((self.constraint.greedy_len(t[len(done):]) + 1 for t in self.tails if t.startswith(done)),
                       default=math.inf)
        return math.inf

    def restrict(self, row: np.ndarray, state: tuple, left: int) -> None:
        """Clear from the packed mask ``row`` the tokens after which the answer could not finish in ``left - 1``."""
        if left - 1 >= self.window:
            return
        table = self.constraint.token_table()
        vocab = self.constraint.vocab_size
        allowed = np.unpackbits(row.view(np.uint8), bitorder="little")[:vocab].astype(bool)
        keep = np.zeros(self.constraint.words * 32, dtype=bool)
        eos = [e for e in self.constraint.eos_ids if e < vocab and allowed[e]]
        keep[eos] = True
        allowed[eos] = False
        if state == ("thoughts", "", 0):  # one test for every token that stays inside the thoughts
            plain = allowed & table.plain
            keep[:vocab] |= plain & (self.close_cost + table.utf8_pending <= left - 1)
            allowed &= ~plain
        for token in np.flatnonzero(allowed):
            keep[token] = self.cost(self.feed(state, table.token_bytes[token])) <= left - 1
        row[:] = np.packbits(keep, bitorder="little").view(np.int32)


class CanonicalAnswers:
    """Action-only answers (a finite set): only the tokenizer's own encoding of each is allowed (a trie of token paths,
    intersected with the text grammar's mask), so the answer's length is known and a fresh model has no other
    tokenizations of one answer to choose between, which would only add noise to its gradient. Written as a filter,
    not as ``<[id]>`` token literals: llguidance forces a lone token literal by its bytes, which fails where two tokens
    share them (SentencePiece's byte-fallback ``<0x7D>`` and ``}``)."""

    START: tuple[int, ...] = ()

    def __init__(self, constraint: GrammarConstraint, paths: Sequence[Sequence[int]]):
        self.constraint = constraint
        self.next: dict[tuple[int, ...], set[int]] = {}
        for path in paths:
            for k in range(len(path) + 1):
                self.next.setdefault(tuple(path[:k]), set()).update([path[k]] if k < len(path) else constraint.eos_ids)

    def advance(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        return (*state, int(token))

    def restrict(self, row: np.ndarray, state: tuple[int, ...], left: int) -> None:
        keep = np.zeros(self.constraint.words * 32, dtype=bool)
        keep[sorted(self.next.get(state, ()))] = True
        row &= np.packbits(keep, bitorder="little").view(np.int32)


class TokenTable:
    """Per-token facts for `AnswerBudget`: each token's bytes; ``plain`` (it can stay inside the thoughts: no quote,
    backslash or control byte, starting on a character); ``utf8_pending`` (continuation bytes still owed after it);
    and the normal tokens by their bytes, for the greedy longest-match tokenization."""

    def __init__(self, lltok, vocab_size: int, never: set[int]):
        self.token_bytes = [b""] * vocab_size
        self.plain = np.zeros(vocab_size, dtype=bool)
        self.utf8_pending = np.zeros(vocab_size, dtype=np.int64)
        self.by_bytes: dict[bytes, int] = {}
        for token in range(min(vocab_size, lltok.vocab_size)):
            if lltok.is_special_token(token):
                continue
            data = lltok.decode_bytes([token])
            self.token_bytes[token] = data
            if not data or token in never:
                continue
            self.by_bytes.setdefault(data, token)
            if data[0] >> 6 == 0b10 or any(b < 0x20 or b in (0x22, 0x5C, 0x7F) for b in data):
                continue
            self.plain[token] = True
            pending = 0
            for b in data:
                if b < 0x80:
                    pending = 0
                else:  # a continuation byte pays one owed byte; a lead byte owes 1-3
                    pending = pending - 1 if b >> 6 == 0b10 else 1 if b < 0xE0 else 2 if b < 0xF0 else 3
            self.utf8_pending[token] = max(pending, 0)
        self.longest = max(map(len, self.by_bytes), default=1)


# A state's bytes still pending inside the thoughts: at most an escape's "uXXXX" after its backslash.
_MAX_PENDING = 5


class GrammarWalk:
    """One completion's way through its grammar: the allowed tokens at each position (`next_mask`) and the token
    taken (`advance`). ``matcher`` None: unconstrained (every token that is not suppressed). ``budget``: the built-in
    answer grammar's bound on the completion's length (`AnswerBudget`, `CanonicalAnswers`)."""

    def __init__(self, constraint: GrammarConstraint, matcher, counted: bool = True,
                 budget: AnswerBudget | CanonicalAnswers | None = None):
        self.constraint = constraint
        self.matcher = matcher
        self.counted = counted  # generation's walks count a fallback; replays of the same completion do not
        self.finished = False  # EOS taken: the rest of the row is padding
        self.fell_back = False
        self.budget, self.state, self.taken = budget, None if budget is None else budget.START, 0

    def next_mask(self, out: np.ndarray, index: int) -> None:
        """Write the packed mask of the allowed tokens (int32 words, bit ``v % 32`` of word ``v // 32``) into row
        ``index`` of ``out``."""
        base = self.constraint.base_mask
        if self.finished:
            out[index] = -1
            return
        if self.matcher is not None:
            self.constraint.llg.numpy.fill_next_token_bitmask(self.matcher, out, index)
            out[index] &= base
            if self.budget is not None:
                self.budget.restrict(out[index], self.state, self.constraint.max_new_tokens - self.taken)
            if out[index].any():
                return
            self._fall_back("no allowed token")
        out[index] = base

    def advance(self, token: int) -> None:
        if self.finished:
            return
        self.taken += 1
        if token in self.constraint.eos_ids:
            self.finished = True
        if self.matcher is not None and not self.finished:
            if not self.matcher.consume_token(int(token)):
                self._fall_back(self.matcher.get_error())
            elif self.budget is not None:
                self.state = self.budget.advance(self.state, token)

    def _fall_back(self, why: str) -> None:
        if not self.fell_back and self.counted:
            self.constraint.count("fallbacks", "A constrained completion continues unconstrained (%s); counted in "
                                  "`generation/grammar_fallbacks`, logged only once.", why)
        self.matcher, self.fell_back = None, True


class GrammarLogitsProcessor(LogitsProcessor):
    """`generate`'s processor for one batch: the logits of tokens a row's grammar does not allow become ``-inf``
    (before temperature and sampling; transformers runs user processors after its own suppression)."""

    def __init__(self, constraint: GrammarConstraint, grammars: Sequence[str | None]):
        self.constraint = constraint
        self.walks = [constraint.walk(g) for g in grammars]
        self.prompt_length: int | None = None
        self.applied: list[np.ndarray] = []  # (batch, words) per generated position: what the rollout scores under

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] > self.constraint.words * 32:
            raise ValueError(
                f"The model's logits have {scores.shape[-1]} columns but the grammar was built for a vocabulary of "
                f"{self.constraint.vocab_size}; build the GrammarConstraint with the model's output size."
            )
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        else:
            for walk, token in zip(self.walks, input_ids[:, -1].tolist()):
                walk.advance(token)
        packed = np.empty((len(self.walks), self.constraint.words), dtype=np.int32)
        for i, walk in enumerate(self.walks):
            walk.next_mask(packed, i)
        self.applied.append(packed)
        allowed = unpack_bitmask(torch.from_numpy(packed).to(scores.device), scores.shape[-1])
        return scores.masked_fill(~allowed, float("-inf"))

    def applied_masks(self) -> torch.Tensor:
        """``(batch, C, words)``: the packed masks applied at each generated position (those `GrammarConstraint.replay`
        recomputes from the completion ids; positions after a row's EOS allow every token)."""
        return torch.from_numpy(np.stack(self.applied, axis=1))


class GrammarConstraint:
    """What constrained decoding needs for one tokenizer and model: the llguidance tokenizer (built once), compiled
    grammars (cached by their text), generation's logits processor and the masks' replay for scoring.

    Args:
        tokenizer: the processor's (fast) tokenizer.
        vocab_size: the columns of the model's logits (may exceed ``len(tokenizer)``: padded heads).
        eos_ids: the token ids that end a completion; the grammar ends with one of them.
        suppressed_ids: ids generation never samples (special and image tokens): never allowed.
        max_new_tokens: the completion budget the built-in answer grammar fits into.

    ``counts``: steps and completions that were not constrained as asked, by kind (``errors``: the grammar hook
    raised or gave an invalid grammar; ``fallbacks``: a walk continued unconstrained; ``no_fit``: no legal action fits
    ``max_new_tokens``; ``no_legal_action``; ``actions_left_out``: steps whose grammar lacks legal actions that do not
    fit); and ``constrained_steps``, the steps generated under a grammar. The first of each other kind is logged as
    a warning.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_ids: Sequence[int], suppressed_ids: Sequence[int] = (),
                 max_new_tokens: int = 256):
        self.llg = _import_llguidance()
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise ValueError(
                f"constrained_decoding needs a fast (Rust) tokenizer; the processor has a {type(tokenizer).__name__}. "
                "Load the processor with `use_fast=True` or turn constrained_decoding off."
            )
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.words = (self.vocab_size + 31) // 32
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.max_new_tokens = int(max_new_tokens)
        self.lltok = self.llg.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size, eos_token=sorted(self.eos_ids))
        allowed = np.ones(self.words * 32, dtype=bool)
        allowed[self.vocab_size:] = False
        self._never = {i for i in suppressed_ids if 0 <= i < self.vocab_size and i not in self.eos_ids}
        allowed[sorted(self._never)] = False
        self.base_mask = np.packbits(allowed, bitorder="little").view(np.int32)
        self.counts: Counter[str] = Counter()
        self.no_fit_needed = 0  # the largest shortest answer (tokens) of the steps counted as ``no_fit``
        self._warned: set[str] = set()
        self._matchers: dict[str, object] = {}
        self._greedy: dict[bytes, int] = {}

    def count(self, kind: str, message: str, *args) -> None:
        """Count one occurrence of ``kind`` in `counts`; the first is logged (``message % args``)."""
        self.counts[kind] += 1
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)

    # ------------------------------------------------------------------ the built-in answer grammar
    @functools.cache  # noqa: B019 - one constraint per trainer/agent, kept for its life
    def token_table(self) -> TokenTable:
        return TokenTable(self.lltok, self.vocab_size, self._never)

    def greedy_len(self, data: bytes) -> int:
        """Tokens of the greedy longest-match tokenization of ``data`` over the normal tokens (one token per byte
        where no token matches: byte-level and byte-fallback vocabularies have them all)."""
        cached = self._greedy.get(data)
        if cached is None:
            by_bytes, longest = self.token_table().by_bytes, self.token_table().longest
            cached, i = 0, 0
            while i < len(data):
                i += next((n for n in range(min(longest, len(data) - i), 0, -1) if data[i : i + n] in by_bytes), 1)
                cached += 1
            self._greedy[data] = cached
        return cached

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def needed_tokens(self, action: str, action_only: bool) -> int:
        """Tokens the answer with ``action`` and empty thoughts needs, EOS included: the smallest ``max_new_tokens``
        under which the answer grammar offers this action. Action-only: the tokenizer's own encoding of the answer
        (`canonical_answer`); otherwise the greedy longest match of its text (`AnswerBudget`'s way to finish)."""
        canonical = self.canonical_answer(action) if action_only else None
        if canonical is not None:
            return len(canonical) + 1
        text = (ACTION_ONLY_PREFIX if action_only else COT_PREFIX + COT_MIDDLE) + json_inner(action) + SUFFIX
        return self.greedy_len(text.encode()) + 1

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def canonical_answer(self, action: str) -> tuple[int, ...] | None:
        """The tokenizer's own encoding of the action-only answer ``{"action": "<action>"}``; None where it does not
        spell exactly that answer (a leading space aside) or uses a token generation never samples."""
        text = ACTION_ONLY_PREFIX + json_inner(action) + SUFFIX
        ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        spelled = self.lltok.decode_bytes(list(ids))
        if spelled not in (text.encode(), b" " + text.encode()) or self._never.intersection(ids):
            return None
        return ids

    def answer_grammar(self, legal_actions: Sequence[str], action_only: bool) -> str | None:
        """The Lark grammar (llguidance dialect) of the task's JSON answer for one step, then EOS.

        With thoughts, it is written as text: an optional leading space (SentencePiece), then ``{"thoughts": "<JSON
        string>", "action": "<one legal action>"}``. Every tokenization of such an answer is allowed, the
        tokenizer's own included; `AnswerBudget` keeps each one within ``max_new_tokens`` with its EOS. Action-only
        answers (``{"action": ...}``) are a finite set: the grammar is the tokenizer's own encoding of each
        (`canonical_answer`), so a fresh model is not given other tokenizations of the same answer to choose between
        (text, as with thoughts, where an encoding does not spell its answer).

        Legal actions whose answer does not fit even with empty thoughts (`needed_tokens`) are left out; None when
        none fits or there is no legal action (the step is then unconstrained). Each of these cases is counted
        (`counts`) and its first occurrence logged with the tokens it needs."""
        grammar, needed = self._answer_grammar(tuple(legal_actions), bool(action_only))
        if not legal_actions:
            self.count("no_legal_action", "A step has no legal action: it is generated unconstrained; counted in "
                       "`generation/grammar_no_legal_action`, logged only once.")
        elif grammar is None:
            self.no_fit_needed = max(self.no_fit_needed, min(needed.values()))
            self.count("no_fit", "max_new_tokens=%d fits none of a step's %d legal actions (the shortest answer "
                       "needs max_new_tokens >= %d): the step is generated unconstrained; counted in "
                       "`generation/grammar_no_fit`, logged only once.", self.max_new_tokens, len(needed),
                       min(needed.values()))
        elif any(n > self.max_new_tokens for n in needed.values()):
            left_out = {a: n for a, n in needed.items() if n > self.max_new_tokens}
            self.count("actions_left_out", "max_new_tokens=%d leaves %d of a step's %d legal actions out of the "
                       "grammar (the policy cannot choose them; the longest needs max_new_tokens >= %d); counted in "
                       "`generation/grammar_actions_left_out`, logged only once.", self.max_new_tokens,
                       len(left_out), len(needed), max(left_out.values()))
        return grammar

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - built once per action set, not for every env at every step
    def _answer_grammar(self, legal_actions: tuple[str, ...], action_only: bool) -> tuple[str | None, dict[str, int]]:
        needed = {a: self.needed_tokens(a, action_only) for a in legal_actions}
        fitting = [a for a, n in needed.items() if n <= self.max_new_tokens]
        if not fitting:
            return None, needed
        canonical = [self.canonical_answer(a) for a in fitting] if action_only else [None]
        literal = functools.partial(json.dumps, ensure_ascii=False)
        if None not in canonical:  # a finite set of answers: exactly their own encodings (`CanonicalAnswers`)
            spec = json.dumps({"canonical": sorted(set(canonical))})
        else:
            spec = json.dumps({"action_only": action_only, "actions": fitting}, ensure_ascii=True)
        head = [literal(ACTION_ONLY_PREFIX)] if action_only else [literal(COT_PREFIX), "thoughts", literal(COT_MIDDLE)]
        lines = [
            f"{_ANSWER_MARK}{spec}",  # `walk` reads its `AnswerBudget` / `CanonicalAnswers` back from the text
            f'start: " "? {" ".join(head)} action {literal(SUFFIX)}',
            "action: " + "\n| ".join(literal(json_inner(a)) for a in fitting),
        ]
        if not action_only:
            lines.append(f"thoughts: /{JSON_STRING_CHARS}/")
        return "\n".join(lines) + "\n", needed

    @functools.lru_cache(maxsize=1024)  # noqa: B019
    def _budget(self, grammar: str) -> AnswerBudget | CanonicalAnswers | None:
        """The length bound of a built-in answer grammar (read from its first line); None for any other grammar."""
        if not grammar.startswith(_ANSWER_MARK):
            return None
        spec = json.loads(grammar[len(_ANSWER_MARK) : grammar.index("\n")])
        if "canonical" in spec:
            return CanonicalAnswers(self, spec["canonical"])
        return AnswerBudget(self, spec["actions"], spec["action_only"])

    # ------------------------------------------------------------------ any grammar
    def compile(self, grammar: str):
        """The compiled ``grammar`` (cached by its text; copy it to walk it). Raises `ValueError` for an invalid one."""
        template = self._matchers.get(grammar)
        if template is None:
            template = self.llg.LLMatcher(self.lltok, grammar, log_level=0)
            if template.is_error():
                raise ValueError(f"Invalid grammar: {template.get_error()}")
            if len(self._matchers) >= 1024:  # e.g. text games with ever new command sets
                self._matchers.clear()
            self._matchers[grammar] = template
        return template

    def matcher(self, grammar: str):
        """A fresh matcher for ``grammar`` (compiled once, then copied). Raises `ValueError` for an invalid one."""
        return self.compile(grammar).deep_copy()

    def walk(self, grammar: str | None, counted: bool = True) -> GrammarWalk:
        if grammar is None:
            return GrammarWalk(self, None, counted)
        return GrammarWalk(self, self.matcher(grammar), counted, self._budget(grammar))

    # ------------------------------------------------------------------ generation and scoring
    def logits_processor(self, grammars: Sequence[str | None]) -> GrammarLogitsProcessor:
        return GrammarLogitsProcessor(self, grammars)

    def replay(self, grammars: Sequence[str | None], completion_ids: torch.Tensor,
               completion_mask: torch.Tensor) -> torch.Tensor:
        """The packed masks ``(batch, C, words)`` int32 that generation applied at each completion position,
        recomputed from the completion ids; padding positions allow every token."""
        ids, lengths = completion_ids.cpu().tolist(), completion_mask.sum(-1).tolist()
        packed = np.full((len(ids), completion_ids.shape[1], self.words), -1, dtype=np.int32)
        for i, grammar in enumerate(grammars):
            walk = self.walk(grammar, counted=False)
            for j in range(int(lengths[i])):
                walk.next_mask(packed[i], j)
                walk.advance(ids[i][j])
        return torch.from_numpy(packed)


def json_inner(text: str) -> str:
    """``text`` as the content of a JSON string (escaped, without its quotes), as `json.dumps` writes the answer."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


# The first line of a built-in answer grammar: a Lark comment that carries its action set (`GrammarConstraint._budget`).
_ANSWER_MARK = "// vlm_env_ppo answer "


def unpack_bitmask(packed: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(..., words)`` int32 packed masks → ``(..., vocab_size)`` bool (bit ``v % 32`` of word ``v // 32``)."""
    as_bytes = packed.contiguous().view(torch.uint8)  # little-endian words: byte k holds tokens 8k .. 8k+7
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (as_bytes.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :vocab_size].bool()


def masked_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, allowed: torch.Tensor, temperature: float,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``token_ids`` under the softmax of ``logits / temperature`` restricted to the allowed tokens:
    ``z_y − logsumexp_{v allowed} z_v`` with ``z = logits / T``. A token the grammar forces gets log-prob 0 (and no
    gradient). Computed one sample at a time, so at most one ``(C, vocab)`` copy exists beside the logits.

    Args:
        logits: ``(batch, C, vocab)``; token_ids: ``(batch, C)``; allowed: ``(batch, C, words)`` packed int32 masks
            (`GrammarConstraint.replay`).

    Returns:
        ``(batch, C)`` log-probs and, with ``compute_entropy``, the restricted distribution's entropy ``(batch, C)``
        (no gradient: it is only logged).

    Raises:
        RuntimeError: a token lies outside its mask (its log-prob would be finite and wrong).
    """
    vocab = logits.shape[-1]
    logprobs, entropies, inside = [], [], []
    for row_logits, row_ids, row_allowed in zip(logits, token_ids, allowed.to(logits.device)):
        z = row_logits.float() / temperature
        ok = unpack_bitmask(row_allowed, vocab)
        inside.append(ok.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1))
        z_allowed = z.masked_fill(~ok, float("-inf"))
        log_normalizer = torch.logsumexp(z_allowed, dim=-1)
        logprobs.append(z.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1) - log_normalizer)
        if compute_entropy:
            with torch.no_grad():
                row_logp = z_allowed - log_normalizer.unsqueeze(-1)
                entropies.append(-torch.where(ok, row_logp.exp() * row_logp, 0.0).sum(-1))
    inside = torch.stack(inside)
    if not bool(inside.all()):  # one host sync per call; a wrong finite log-prob would bias the update silently
        row, position = (int(i) for i in (~inside).nonzero()[0])
        raise RuntimeError(
            f"Token {int(token_ids[row, position])} at completion position {position} of sample {row} lies outside the "
            "tokens its grammar mask allows: the masks replayed for scoring differ from those generation applied "
            "(an `answer_grammar` or grammar that is not a function of its text and the tokens so far?)."
        )
    return torch.stack(logprobs), (torch.stack(entropies) if compute_entropy else None)


def output_vocab_size(policy) -> int:
    """The number of logit columns of a policy (its output embeddings' rows; else the text config's vocab size).
    Under ZeRO-3 a process holds a shard of each weight (an empty tensor) and DeepSpeed keeps the full shape in
    ``ds_shape``."""
    head = policy.get_output_embeddings() if hasattr(policy, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(getattr(head.weight, "ds_shape", head.weight.shape)[0])
    config = policy.config.get_text_config() if hasattr(policy.config, "get_text_config") else policy.config
    return int(config.vocab_size)
