"""The value head and the one forward pass that gives PPO both token log-probs and values.

The value head sits on the VLM's own last hidden state at the final prompt token (the paper's), so policy
and critic share one body: no second model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

from ..constrained import masked_logprobs

# Per-token model inputs that must be extended over the completion when it is appended to the prompt. Qwen-VL's
# `mm_token_type_ids` marks image/video tokens for its 3D rope; completion tokens are text (0).
PER_TOKEN_KEYS = ("attention_mask", "token_type_ids", "mm_token_type_ids")

VALUE_HEAD_WEIGHTS = "value_head.safetensors"


class ValueHead(nn.Module):
    """MLP ``hidden_size → hidden_sizes... → 1`` with ReLU (paper: 4096 → 1024 → 512 → 1). Always float32."""

    def __init__(self, hidden_size: int, hidden_sizes: Sequence[int] = (1024, 512)):
        super().__init__()
        sizes = [int(hidden_size), *[int(h) for h in hidden_sizes]]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], 1))
        self.mlp = nn.Sequential(*layers).float()
        self.config = {"hidden_size": int(hidden_size), "hidden_sizes": [int(h) for h in hidden_sizes]}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(batch, hidden_size)`` → ``(batch,)`` values, computed in float32 whatever the body's dtype."""
        return self.mlp(hidden.float()).squeeze(-1)


def text_hidden_size(config) -> int:
    """Hidden size of the language model inside a VLM config (LLaVA, Qwen-VL, Idefics3 ...)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.hidden_size)


def concat_prompt_completion(
    prompt_inputs: dict[str, torch.Tensor], completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Model inputs for ``prompt + completion``: ids appended, per-token keys extended, vision inputs kept."""
    inputs = dict(prompt_inputs)
    inputs["input_ids"] = torch.cat([prompt_inputs["input_ids"], completion_ids], dim=1)
    for key in PER_TOKEN_KEYS:
        if key in prompt_inputs:
            ext = completion_mask if key == "attention_mask" else torch.zeros_like(completion_ids)
            inputs[key] = torch.cat([prompt_inputs[key], ext.to(prompt_inputs[key].dtype)], dim=1)
    if "image_grid_thw" not in inputs and "attention_mask" in inputs:
        # Positions count real tokens only, so a sample's log-probs do not depend on how much left padding its
        # micro-batch needs (rollout and update batch samples differently). Qwen-VL (`image_grid_thw`) computes its
        # 3D rope positions from the attention mask itself.
        inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return inputs


def policy_forward(
    model: nn.Module,
    value_head: ValueHead | None,
    prompt_inputs: dict[str, torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    compute_entropy: bool = False,
    suppressed_ids: torch.Tensor | None = None,
    allowed_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One forward of the VLM on ``prompt + completion``.

    Prompts are left-padded and completions right-padded, so the last prompt token is at index ``P - 1`` for every
    row. Only the ``C + 1`` last positions get logits (``logits_to_keep``), not the whole image-laden prompt.
    ``suppressed_ids``: the token ids generation never samples; log-probs are then those of the softmax renormalised
    over the other tokens, the distribution the completions were sampled from (`exclude_suppressed`).
    ``allowed_tokens``: ``(batch, C, words)`` packed masks of the tokens constrained decoding allowed at each position
    (`vlm_env_ppo.constrained`, suppressed tokens already excluded); log-probs and entropy are then those of the
    softmax restricted to them (`masked_logprobs`), and ``suppressed_ids`` is not used.

    Returns:
        ``per_token_logprobs`` ``(batch, C)`` at ``temperature`` (0 on padding), ``entropy`` ``(batch, C)`` or None
        (of the full softmax; it is only logged),
        ``values`` ``(batch,)`` from the value head on the last prompt token's final hidden state, or None when
        ``value_head`` is None.
    """
    prompt_len = prompt_inputs["input_ids"].shape[1]
    completion_len = completion_ids.shape[1]
    inputs = concat_prompt_completion(prompt_inputs, completion_ids, completion_mask)
    outputs = model(
        **inputs,
        use_cache=False,
        output_hidden_states=value_head is not None,
        logits_to_keep=completion_len + 1,
    )
    logits = outputs.logits[:, :-1, :]  # (batch, C, vocab): position P-1+j predicts completion token j
    if allowed_tokens is not None:
        logprobs, entropy = masked_logprobs(logits, completion_ids, allowed_tokens, temperature, compute_entropy)
    elif compute_entropy:
        # Entropy is only logged (the loss has no entropy bonus): no graph for it, which saves a (batch, C, vocab)
        # activation per micro-batch.
        logprobs, entropy = selective_log_softmax_and_entropy(
            logits.float(), completion_ids, entropy_requires_grad=False, temperature=temperature,
            row_mask=completion_mask,
        )
    else:
        logprobs = selective_log_softmax(logits.float(), completion_ids, temperature=temperature)
        entropy = None
    if allowed_tokens is None and suppressed_ids is not None and suppressed_ids.numel():
        logprobs = exclude_suppressed(logprobs, logits, completion_ids, suppressed_ids, temperature)
    logprobs = logprobs * completion_mask
    values = None
    if value_head is not None:
        last_prompt_hidden = outputs.hidden_states[-1][:, prompt_len - 1, :]  # (batch, hidden)
        values = value_head(last_prompt_hidden)
    return logprobs, entropy, values


def exclude_suppressed(
    logprobs: torch.Tensor, logits: torch.Tensor, token_ids: torch.Tensor, suppressed_ids: torch.Tensor, temperature
) -> torch.Tensor:
    """``log p(x)`` of the full softmax at ``temperature`` → ``log p(x | x not suppressed) = log p(x) − log(1 − p(S))``.

    Only the ``|S|`` suppressed columns are read (``S`` is small: special and image tokens), never a second
    ``(batch, C, vocab)`` tensor. The gradient is that of the renormalised distribution: none reaches the suppressed
    logits, which the sampled policy does not depend on.
    """
    ids = suppressed_ids.to(logits.device)
    vocab = logits.shape[-1]
    # Ids past the head's vocab (a processor's extra ids) are masked, not filtered out: a boolean filter would make
    # the device wait for the host on every forward of the rollout and the update.
    suppressed = logits.index_select(-1, ids.clamp(max=vocab - 1)).float().masked_fill(ids >= vocab, float("-inf"))
    chosen = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1).float() / temperature
    log_normalizer = chosen - logprobs  # logsumexp of the full row at `temperature`
    log_p_suppressed = torch.logsumexp(suppressed / temperature, dim=-1) - log_normalizer
    # log(1 - p(S)) as log(-expm1(log p(S))), exact near p(S) = 1 too; the clamp keeps p(S) = 1 (every other token at
    # probability 0) finite. When p(S) is close to 1, the subtraction above costs relative precision; rollout and
    # update compute the same numbers, so PPO's ratio is unaffected.
    return logprobs - torch.log(-torch.expm1(log_p_suppressed.clamp(max=-1e-6)))

