"""Grammar-constrained decoding (`VLMPPOConfig(constrained_decoding=True)`): every completion is an answer the parser
accepts, and PPO scores exactly the distribution it was sampled from.

A step's completion is generated under a grammar, compiled by llguidance (chosen over xgrammar and outlines-core in
``benchmarks/grammar_backends.py``: it compiled an action set in 1–22 ms on this CPU, computed a token mask in
5–8 µs, and never allowed a token it then rejected). For a `Task` the grammar is the JSON answer its prompt asks for
(`answer_grammar`): ``{"thoughts": "<free text>", "action": "<one legal action>"}`` (or ``{"action": ...}``), then
EOS. The fixed parts and each action are written as token sequences, so their length in tokens is known, and the
thoughts are bounded in tokens (llguidance's ``max_tokens``) so that the answer always closes within
``max_new_tokens``.

Exactness. At every position the policy samples from the softmax at the sampling temperature, restricted to the
tokens the grammar allows there (and not suppressed) and renormalised. `GrammarWalk` decides those tokens, one
position at a time; generation (`GrammarLogitsProcessor`) and scoring (`GrammarConstraint.replay`, from the completion
ids the buffer holds) run the same walk: the rollout scores under the masks generation applied, every update under
their replay, and the reference under the same masks (see `masked_logprobs`), all of that distribution. Nothing vocabulary-sized is stored per token:
the masks are replayed per micro-batch.

A walk whose grammar has no allowed token left, or rejects a token (neither happens with the built-in grammars),
continues unconstrained from there, in generation and in replay alike; it is counted (``fallbacks``).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

logger = logging.getLogger(__name__)

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


class GrammarWalk:
    """One completion's way through its grammar: the allowed tokens at each position (`next_mask`) and the token
    taken (`advance`). ``matcher`` None: unconstrained (every token that is not suppressed)."""

    def __init__(self, constraint: GrammarConstraint, matcher, counted: bool = True):
        self.constraint = constraint
        self.matcher = matcher
        self.counted = counted  # generation's walks count a fallback; replays of the same completion do not
        self.finished = False  # EOS taken: the rest of the row is padding
        self.fell_back = False

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
            if out[index].any():
                return
            self._fall_back("no allowed token")
        out[index] = base

    def advance(self, token: int) -> None:
        if self.finished:
            return
        if token in self.constraint.eos_ids:
            self.finished = True
        if self.matcher is not None and not self.finished and not self.matcher.consume_token(int(token)):
            self._fall_back(self.matcher.get_error())

    def _fall_back(self, why: str) -> None:
        if not self.fell_back and self.counted:
            self.constraint.fallbacks += 1
            if self.constraint.fallbacks == 1:
                logger.warning("A constrained completion continues unconstrained (%s); counted in "
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
        allowed[[i for i in suppressed_ids if 0 <= i < self.vocab_size and i not in self.eos_ids]] = False
        self.base_mask = np.packbits(allowed, bitorder="little").view(np.int32)
        self.fallbacks = 0  # cumulative: walks that continued unconstrained
        self._matchers: dict[str, object] = {}
        self._warned_budget = False

    # ------------------------------------------------------------------ grammars
    def tokens(self, text: str) -> list[int]:
        """A token sequence that spells exactly ``text``: the tokenizer's own encoding of it where that spells it
        byte for byte (byte-level BPE: Qwen, Llama 3, Tekken), else the greedy longest match over token bytes
        (SentencePiece vocabularies, whose encoding prepends a space)."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if self.lltok.decode_bytes(ids) == text.encode():
            return ids
        ids = self.lltok.greedy_tokenize(text)
        if self.lltok.decode_bytes(ids) != text.encode():  # cannot happen for byte-level or byte-fallback vocabularies
            raise ValueError(f"The tokenizer cannot spell {text!r} exactly; use a custom `answer_grammar`.")
        return ids

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one constraint per trainer/agent, kept for its life
    def action_tokens(self, action: str) -> tuple[int, ...]:
        """The tokens of an action's JSON string content and the answer's closing ``"}``."""
        return tuple(self.tokens(json.dumps(action, ensure_ascii=False)[1:-1] + SUFFIX))

    @functools.lru_cache(maxsize=2)  # noqa: B019
    def action_room(self, action_only: bool) -> int:
        """Tokens ``max_new_tokens`` leaves for the thoughts and the action (with its closing ``"}``): the budget less
        the answer's fixed parts and EOS."""
        fixed = self.tokens(ACTION_ONLY_PREFIX) if action_only else self.tokens(COT_PREFIX) + self.tokens(COT_MIDDLE)
        return self.max_new_tokens - len(fixed) - 1

    def answer_grammar(self, legal_actions: Sequence[str], action_only: bool) -> str | None:
        """The Lark grammar (llguidance dialect) of the task's JSON answer for one step: fixed parts and actions as
        token sequences, the thoughts as a JSON string of at most as many tokens as the budget leaves, then EOS.

        Every answer it accepts fits ``max_new_tokens`` with its EOS. Actions too long to fit even with empty
        thoughts are left out (logged); None when none fits or there is no legal action (the step is then
        unconstrained)."""
        return self._answer_grammar(tuple(legal_actions), bool(action_only))

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - built once per action set, not for every env at every step
    def _answer_grammar(self, legal_actions: tuple[str, ...], action_only: bool) -> str | None:
        prefix = self.tokens(ACTION_ONLY_PREFIX if action_only else COT_PREFIX)
        middle = [] if action_only else self.tokens(COT_MIDDLE)
        room = self.action_room(action_only)
        actions = {a: self.action_tokens(a) for a in legal_actions}
        fitting = {a: ids for a, ids in actions.items() if len(ids) <= room}
        if len(fitting) < len(actions) and not self._warned_budget:
            self._warned_budget = True
            logger.warning(
                "max_new_tokens=%d leaves room for %d action tokens; %d of %d legal actions do not fit and are left "
                "out of the grammar (the longest needs max_new_tokens >= %d); logged once.", self.max_new_tokens, room,
                len(actions) - len(fitting), len(actions), self.max_new_tokens - room + max(map(len, actions.values()), default=0),
            )
        if not fitting:
            return None
        thought_tokens = room - max(len(ids) for ids in fitting.values())
        literal = lambda ids: " ".join(f"<[{i}]>" for i in ids)  # noqa: E731
        parts = [literal(prefix)]
        if not action_only:
            parts += ["thoughts"] if thought_tokens > 0 else []  # no room for thoughts: an empty string
            parts.append(literal(middle))
        lines = [f"start: {' '.join(parts)} action", f"action: {' | '.join(map(literal, dict.fromkeys(fitting.values())))}"]
        if "thoughts" in parts:
            lines.append(f"thoughts[max_tokens={thought_tokens}]: /{JSON_STRING_CHARS}/")
        return "\n".join(lines) + "\n"

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
        return GrammarWalk(self, None if grammar is None else self.matcher(grammar), counted)

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
    """
    vocab = logits.shape[-1]
    logprobs, entropies = [], []
    for row_logits, row_ids, row_allowed in zip(logits, token_ids, allowed.to(logits.device)):
        z = row_logits.float() / temperature
        ok = unpack_bitmask(row_allowed, vocab)
        z_allowed = z.masked_fill(~ok, float("-inf"))
        log_normalizer = torch.logsumexp(z_allowed, dim=-1)
        logprobs.append(z.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1) - log_normalizer)
        if compute_entropy:
            with torch.no_grad():
                row_logp = z_allowed - log_normalizer.unsqueeze(-1)
                entropies.append(-torch.where(ok, row_logp.exp() * row_logp, 0.0).sum(-1))
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
