"""Completion log-probabilities and the chain-of-thought / action token weights.

The paper: ``log pi(a|o) = λ * sum log p(CoT tokens) + sum log p(action tokens)``. RL4VLM found the
CoT/action boundary by searching for hard-coded token ids of ``"action":``, which broke whenever the tokenizer
changed. Here the boundary is a *character* offset in the decoded completion (``ParsedAction.action_start``) and is
mapped to a token index by decoding prefixes of the generated ids, which works for any tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def action_token_index(tokenizer, completion_ids: Sequence[int], action_start: int | None) -> int:
    """Index of the first completion token that belongs to the action part.

    The action part starts at character ``action_start`` of ``tokenizer.decode(completion_ids,
    skip_special_tokens=True)`` (the text the parser saw). The token whose decoded text contains that character is
    the first action token, so a token that straddles the boundary counts as action (weight 1). Returns
    ``len(completion_ids)`` when there is no action part and 0 when ``action_start`` is None (see
    `token_weights` for why an unparsable completion is weighted as a whole).

    Decoding is done on prefixes with a binary search: ``O(log T)`` decodes, no assumption about how the tokenizer
    splits ``"action"``.
    """
    ids = list(completion_ids)
    if action_start is None:
        return 0
    lo, hi = 0, len(ids)  # find the smallest k with len(decode(ids[:k])) > action_start
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=True)) > action_start:
            hi = mid
        else:
            lo = mid + 1
    return lo


def token_weights(
    completion_mask: torch.Tensor, action_token_starts: Sequence[int], cot_logprob_coef: float
) -> torch.Tensor:
    """Per-token weights: ``λ`` before the action start, ``1`` from it on, ``0`` on padding.

    A completion with no action part (it did not parse) is weighted 1 everywhere (``action_token_start = 0``): the
    whole text is the decision that produced the invalid-output outcome (random action and/or penalty), so it gets
    the full credit, like an action. This keeps the penalty for unparsable text from being scaled down by λ.

    Args:
        completion_mask: ``(batch, completion_len)`` 1 for real completion tokens (up to and including EOS).
        action_token_starts: ``batch`` token indices from `action_token_index`.
        cot_logprob_coef: λ in [0, 1].

    Returns:
        ``(batch, completion_len)`` float weights.
    """
    positions = torch.arange(completion_mask.shape[1], device=completion_mask.device)  # (completion_len,)
    starts = torch.as_tensor(list(action_token_starts), device=completion_mask.device).unsqueeze(1)  # (batch, 1)
    weights = torch.where(positions.unsqueeze(0) >= starts, 1.0, float(cot_logprob_coef))
    return weights * completion_mask.float()


def weighted_logprob(per_token_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(batch, completion_len)`` token log-probs and weights → ``(batch,)`` λ-weighted action log-probs."""
    return (per_token_logprobs * weights).sum(dim=-1)
