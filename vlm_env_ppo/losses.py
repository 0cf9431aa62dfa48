"""PPO losses and their statistics: small pure functions on tensors (one entry per env step)."""

from __future__ import annotations

import math

import torch


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, cliprange: float,
    sample_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective of PPO, as a loss to minimize (mean over the batch).

    All inputs are ``(batch,)``: one λ-weighted action log-prob per env step (the paper's method).
    ``sample_weights``: each sample's term is multiplied by it (no gradient), e.g. `importance_weights`.
    Returns the loss and detached statistics: ``approx_kl`` (the low-variance ``k3`` estimate of
    KL(old || new)), ``clipfrac`` and the mean ``ratio``.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_sample = torch.max(unclipped, clipped)
    loss = (per_sample if sample_weights is None else per_sample * sample_weights.detach()).mean()
    with torch.no_grad():
        stats = {
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "clipfrac": (clipped > unclipped).float().mean(),
            "ratio": ratio.mean(),
        }
    return loss, stats


def importance_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling between the distribution that sampled a completion and the one PPO scores it
    under: ``min(exp(old_logprobs - sampler_logprobs), cap)`` per sample (``(batch,)`` λ-weighted sequence log-probs;
    TRL's ``vllm_importance_sampling_mode="sequence_truncate"``, Yao et al. 2025's truncated IS). A sample whose
    sampler log-prob is not finite gets weight 1 (no correction)."""
    log_ratio = (old_logprobs - sampler_logprobs).float()
    weights = torch.exp(log_ratio.clamp(max=math.log(cap)))
    return torch.where(torch.isfinite(log_ratio), weights, torch.ones_like(weights))


def value_loss(
    values: torch.Tensor | None, old_values: torch.Tensor, returns: torch.Tensor, cliprange_value: float | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)`` (mean over the batch).

    ``V_clip`` keeps the new value within ``cliprange_value`` of the value recorded at rollout time.
    ``cliprange_value=None`` gives the plain squared error. Returns the loss and its clip fraction; both NaN when
    ``values`` is None (no value head: the critic-free advantage estimators), for the caller to leave out.
    """
    if values is None:
        nan = torch.tensor(float("nan"), device=returns.device)
        return nan, {"clipfrac": nan}
    unclipped = (values - returns) ** 2
    if cliprange_value is None:
        return 0.5 * unclipped.mean(), {"clipfrac": torch.zeros((), device=values.device)}
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * torch.max(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {"clipfrac": (clipped > unclipped).float().mean()}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """``1 - Var[R - V] / Var[R]``: 1 is a perfect critic, 0 no better than a constant, NaN if returns are constant."""
    var_returns = returns.float().var(unbiased=False)
    if var_returns == 0:
        return float("nan")
    return float(1 - (returns.float() - values.float()).var(unbiased=False) / var_returns)
