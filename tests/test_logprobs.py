"""CoT/action token weights from character offsets, for tokenizers that split `"action"` differently."""

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vlm_env_ppo.logprobs import action_token_index, token_weights, weighted_logprob

CORPUS = [
    '{"thoughts": "the target is 3 and the current is 1, so I move right", "action": "+"}',
    '{"thoughts": "cards are K and 2, 10 + 2 = 12", "action": "="}',
    '{"thoughts": "I have 15 and the dealer shows 10, I should hit", "action": "hit"}',
    "number line target current formula cards dealer stand hit",
]


def _byte_bpe(vocab_size: int, corpus: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def _metaspace_bpe() -> PreTrainedTokenizerFast:
    """SentencePiece-like (Llama/Mistral style): words are prefixed with '▁' and no byte fallback."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<eos>"])
    tok.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


TOKENIZERS = {
    # only the 256 byte symbols: `"action"` is 8 tokens
    "bytes": lambda: _byte_bpe(257, ["x"]),
    # a big vocab trained on JSON answers: `"action"` is one or two tokens glued to quotes/colons
    "json_bpe": lambda: _byte_bpe(600, CORPUS * 50),
    "metaspace": _metaspace_bpe,
}


def _completion(rng: random.Random) -> str:
    words = ["target", "is", "3", "current", "1", "so", "move", "right", "cards", "12", "hit", "I", "think"]
    thoughts = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
    action = rng.choice(["+", "-", "hit", "stand", "10", "="])
    sep = rng.choice([" ", "", "\n  "])
    return f'{{"thoughts": "{thoughts}",{sep}"action": "{action}"}}'


def _manual_split(tokenizer, ids, action_start):
    """Independent reference: walk the tokens and accumulate each one's decoded length."""
    pos = 0
    for j, token_id in enumerate(ids):
        pos = len(tokenizer.decode(ids[: j + 1], skip_special_tokens=True))
        if pos > action_start:
            return j
    return len(ids)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_weighted_logprob_equals_manual_sum(name):
    tokenizer = TOKENIZERS[name]()
    rng = random.Random(0)
    action_tokens_seen = set()
    for _ in range(40):
        text = _completion(rng)
        ids = tokenizer.encode(text, add_special_tokens=False)
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        start = decoded.rfind('"action"')
        assert start > 0
        k = action_token_index(tokenizer, ids, start)
        assert k == _manual_split(tokenizer, ids, start)
        # the boundary token is the one that contains the opening quote of "action"
        prefix = lambda n: len(tokenizer.decode(ids[:n], skip_special_tokens=True))  # noqa: E731
        assert prefix(k) <= start < prefix(k + 1)
        action_tokens_seen.add(tuple(tokenizer.convert_ids_to_tokens(ids[k : k + 3])))

        lam = 0.5
        logps = torch.randn(1, len(ids) + 2)  # two padding positions
        mask = torch.tensor([[1] * len(ids) + [0, 0]])
        w = token_weights(mask, [k], lam)
        manual = sum((lam if j < k else 1.0) * float(logps[0, j]) for j in range(len(ids)))
        assert weighted_logprob(logps, w).item() == pytest.approx(manual, rel=1e-5, abs=1e-5)
    assert action_tokens_seen  # sanity: boundaries were found


def test_tokenizers_split_action_differently():
    pieces = {}
    for name, make in TOKENIZERS.items():
        tok = make()
        pieces[name] = tuple(tok.tokenize('"action": "+"'))
    assert len(set(pieces.values())) == len(pieces), pieces


def test_unparsed_completion_is_weighted_as_action_and_padding_is_zero():
    mask = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(token_weights(mask, [0], 0.3), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(token_weights(mask, [2], 0.3), torch.tensor([[0.3, 0.3, 1.0, 0.0]]))
    tok = TOKENIZERS["bytes"]()
    assert action_token_index(tok, tok.encode("abc"), None) == 0
    assert action_token_index(tok, tok.encode("abc"), 10) == 3  # action part past the end: all CoT


def test_suppressed_tokens_are_excluded_from_the_scored_distribution():
    """Completions are sampled with special/image tokens suppressed, so their log-probs must be those of the softmax
    renormalised over the other tokens: equal to a log-softmax with the suppressed logits at -inf, gradient too."""
    from trl.trainer.utils import selective_log_softmax

    from vlm_env_ppo.models.value_head import exclude_suppressed

    torch.manual_seed(0)
    vocab, temperature = 50, 0.7
    suppressed = torch.tensor([0, 3, 7, 49, 120])  # 120 is outside this vocab (a processor id the head lacks): ignored
    logits = (3 * torch.randn(2, 6, vocab)).requires_grad_()
    with torch.no_grad():
        logits[..., 3] += 4.0  # the model puts much of its mass on a token it can never sample
    allowed = torch.tensor([i for i in range(vocab) if i not in suppressed.tolist()])
    tokens = allowed[torch.randint(len(allowed), (2, 6))]

    full = selective_log_softmax(logits, tokens, temperature=temperature)
    ours = exclude_suppressed(full, logits, tokens, suppressed, temperature)
    masked = (logits / temperature).index_fill(-1, suppressed[suppressed < vocab], float("-inf"))
    reference = torch.log_softmax(masked, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert (ours >= full - 1e-6).all() and (ours - full).max() > 1.0, "the suppressed mass was not removed"
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    (grad_reference,) = torch.autograd.grad(reference.sum(), logits)
    torch.testing.assert_close(grad_ours, grad_reference, atol=1e-5, rtol=1e-5)
    # tokens that can never be sampled take no part in the objective
    assert grad_ours[..., suppressed[suppressed < vocab]].abs().max() < 1e-6
