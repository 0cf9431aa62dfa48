"""Advantage estimation and KL estimators: small pure functions on tensors.

Shapes follow CleanRL: rollout storage is ``(num_steps, num_envs)``.
"""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation with correct handling of time limits.

    Step ``t`` of env ``e`` took action ``a_t`` in observation ``o_t`` (value ``values[t, e]``) and got
    ``rewards[t, e]``. If the episode ended there, the vector env already reset it, so ``o_{t+1}`` in the
    storage belongs to a *new* episode and must not be bootstrapped from:

    - ``terminated[t, e]``: a true end of the task, the return after it is 0.
    - ``truncated[t, e]`` (a time limit, not an end of the task): bootstrap from the value of the final
      observation of that episode, ``final_values[t, e]`` (CleanRL treats this as termination; SB3's
      ``compute_returns_and_advantage`` fixes it the same way as here).

    Args:
        rewards, values, terminated, truncated, final_values: ``(num_steps, num_envs)``. ``final_values`` is only
            read where ``truncated & ~terminated``.
        next_value: ``(num_envs,)`` value of the observation after the last stored step.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``(num_steps, num_envs)``, with ``returns = advantages + values``.
    """
    num_steps = rewards.shape[0]
    rewards = rewards.float()
    values = values.float()
    terminated = terminated.bool()
    done = terminated | truncated.bool()
    # Rewards of truncated steps absorb the bootstrap value of the lost future, which decouples them from the
    # (reset) next observation in the storage: r_t + gamma * V(final_obs).
    bootstrap = torch.where(truncated.bool() & ~terminated, final_values.float(), torch.zeros_like(values))
    rewards = rewards + gamma * bootstrap

    advantages = torch.zeros_like(values)  # (num_steps, num_envs)
    lastgaelam = torch.zeros_like(next_value, dtype=torch.float32)
    for t in reversed(range(num_steps)):
        nextvalues = next_value.float() if t == num_steps - 1 else values[t + 1]
        nextnonterminal = (~done[t]).float()
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
        advantages[t] = lastgaelam
    return advantages, advantages + values


def spread_back_in_episodes(bad: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Mark every step whose GAE advantage reads a bad step: the earlier steps of the same episode.

    GAE at step ``t`` sums the TD errors of ``t, t+1, ...`` up to the end of its episode, so a value or reward that
    is wrong at step ``t`` (a non-finite one entered as 0) corrupts the advantages and returns of every earlier step
    of that env back to the previous episode end, not only its own.

    Args:
        bad: ``(num_steps, num_envs)`` bool, the steps known to be bad.
        done: ``(num_steps, num_envs)`` bool, ``terminated | truncated`` (the episode ended after that step).

    Returns:
        ``(num_steps, num_envs)`` bool: ``bad`` plus every step that reaches a bad one without crossing an episode end.
    """
    out = bad.clone()
    for t in reversed(range(bad.shape[0] - 1)):
        out[t] |= out[t + 1] & ~done[t].bool()
    return out


def whiten(values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8):
    """Normalize to zero mean and unit variance over all (masked) entries.

    For distributed runs, pass the already-gathered global tensor (or use `global_mean_std`) so every process
    whitens with the same statistics.
    """
    if mask is None:
        mean, var = values.mean(), values.var(unbiased=False)
    else:
        mask = mask.to(values.dtype)
        n = mask.sum().clamp(min=1)
        mean = (values * mask).sum() / n
        var = (((values - mean) ** 2) * mask).sum() / n
    whitened = (values - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


def normalize_advantages(
    advantages: torch.Tensor, std_floor: float, statistics_of: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Centre advantages and scale them to unit variance, but by at most ``1 / std_floor``:
    ``(A - mean) / max(std, std_floor)``.

    Classic whitening divides by ``std + 1e-8``. Once a policy has converged every sample earns the same return, so
    the advantages are only the critic's error (a few hundredths and shrinking as the critic fits), and whitening
    blows that noise up to unit scale: every update then pushes the policy as hard as at the start of training, in
    directions set by the critic's error (sampled answers on frames the critic overvalues are pushed down in every
    update). Measured on the quickstart's task (ColorChoice, seed 2): a raw advantage std of 0.004-0.005 (median over
    updates 100-140) after convergence against 0.2-0.6 while learning, i.e. 100x and more amplification; one seed in
    three collapsed to 0.5 greedy success with every output invalid. A floor in reward units bounds that amplification
    and keeps whitening where there is signal, in the spirit of DreamerV3's return normalisation (Hafner et al. 2023:
    scale large returns down, do not scale small ones up). Measured with `benchmarks/learning.py`: floors 1.0 (never
    scale up) and 0.1 both held ColorChoice on every seed; on the multi-step probes classic whitening, 1.0 and 0.1
    reach 90% on as many seeds (Trap 1 of 3, DelayedCredit 2 of 3), not the same ones. 0.1 bounds the amplification at
    10x and keeps more of whitening's scale-free behaviour for rewards of size 1. ``std_floor=0`` is classic
    whitening.

    Args:
        advantages: any shape; non-finite entries (skipped samples) are left as they are and ignored by the stats.
        std_floor: the smallest divisor, in reward units.
        statistics_of: the tensor to take mean and std from (the advantages of all processes when distributed, so
            every process normalises alike); ``advantages`` when None.

    Returns:
        ``(normalized, stats)`` with ``stats = {"mean", "std", "scale"}`` (``scale`` the divisor used).
    """
    source = advantages if statistics_of is None else statistics_of
    finite = source[torch.isfinite(source)].float()
    mean = float(finite.mean()) if finite.numel() else 0.0
    std = float(finite.std(unbiased=False)) if finite.numel() else 0.0
    scale = max(std, std_floor, 1e-8)
    return (advantages - mean) / scale, {"mean": mean, "std": std, "scale": scale}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL divergence").

    - ``"k1"``: ``log pi - log pi_ref``. Unbiased, can be negative per sample; TRL's default.
    - ``"k3"``: ``(r - 1) - log r`` with ``r = pi_ref / pi``. Unbiased, always >= 0, lower variance.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"Unknown kl_estimator {estimator!r}; use 'k1' or 'k3'.")


# ---------------------------------------------------------------------------------------------------------------------
# Critic-free, group-relative estimators (`VLMPPOConfig.advantage_estimator` "grpo", "rloo", "gigpo").
#
# A *group* is `group_size` envs reset on the same seed, so their episodes start from the same initial state; each time
# the group restarts together it plays one *round* of `group_size` episodes (see `vlm_env_ppo.groups`). The functions
# below take one rollout's `(num_steps, num_envs)` tensors and the round of every step (`-1` for steps outside any
# complete round), and give every step of a complete round its advantage.

GROUP_ESTIMATORS = ("grpo", "rloo", "gigpo")


def _group_index(keys: list) -> torch.Tensor:
    """Dense ids ``0..G-1`` of hashable ``keys``, in order of first appearance."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.long)


def group_normalize(
    scores: torch.Tensor, groups: torch.Tensor, std_floor: float = 0.0, scale_by_std: bool = True
) -> torch.Tensor:
    """Each score minus its group's mean, divided by ``max(std, std_floor)`` of the group (``scale_by_std``).

    GRPO's group-relative advantage (Shao et al. 2024, arXiv 2402.03300) and GiGPO's episode- and step-level
    normalisation (Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training", arXiv 2505.10978,
    eqs. for A^E and A^S, whose F_norm is the std or 1). The std is the unbiased one over the group, as
    verl-agent's ``episode_norm_reward`` / ``step_norm_reward`` (gigpo/core_gigpo.py) compute it; where it adds
    ``epsilon=1e-6`` this floors it at ``std_floor`` (`VLMPPOConfig.advantage_std_floor`: a group whose returns barely
    differ is not blown up to unit scale). ``scale_by_std=False`` is verl-agent's ``mode="mean_norm"`` (Dr. GRPO's
    unscaled advantage). A group of one has no one to compare with: its advantage is 0 (verl-agent's step level does
    the same; its episode level keeps a lone episode's raw score, which cannot happen here: a round is always whole).

    Args:
        scores: ``(n,)`` float.
        groups: ``(n,)`` long, the group of each score.
    Returns:
        ``(n,)`` advantages.
    """
    scores = scores.float()
    num_groups = int(groups.max()) + 1 if groups.numel() else 0
    counts = torch.zeros(num_groups).index_add_(0, groups, torch.ones_like(scores))
    mean = torch.zeros(num_groups).index_add_(0, groups, scores) / counts.clamp(min=1)
    centred = scores - mean[groups]
    if not scale_by_std:
        return centred
    sq = torch.zeros(num_groups).index_add_(0, groups, centred**2)
    std = (sq / (counts - 1).clamp(min=1)).sqrt()
    return centred / std.clamp(min=max(std_floor, 1e-6))[groups]


def leave_one_out_advantages(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO: each score minus the mean of the *other* scores of its group (Kool et al. 2019, "Buy 4 REINFORCE
    samples, get a baseline for free!"; Ahmadian et al. 2024, arXiv 2402.14740), an unbiased baseline, not scaled by
    any std (verl's ``compute_rloo_outcome_advantage``: ``score * n/(n-1) - mean * n/(n-1)``, the same number). A
    group of one has no other score: advantage 0."""
    scores = scores.float()
    num_groups = int(groups.max()) + 1 if groups.numel() else 0
    counts = torch.zeros(num_groups).index_add_(0, groups, torch.ones_like(scores))[groups]
    sums = torch.zeros(num_groups).index_add_(0, groups, scores)[groups]
    others = (sums - scores) / (counts - 1).clamp(min=1)
    return torch.where(counts > 1, scores - others, torch.zeros_like(scores))


def discounted_returns(rewards: torch.Tensor, done: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` within each episode (``done[t]``: the episode ended after step ``t``); a step
    whose episode the rollout's end cuts off sums only the rewards stored (callers drop such steps). GiGPO's step
    return (arXiv 2505.10978; verl-agent's ``compute_step_discounted_returns``). ``(num_steps, num_envs)`` in and
    out."""
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = torch.zeros(rewards.shape[1])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t].float() + gamma * running * (~done[t].bool()).float()
        out[t] = running
    return out


def group_relative_advantages(
    estimator: str,
    rewards: torch.Tensor,
    done: torch.Tensor,
    rounds: torch.Tensor,
    state_keys: list | None = None,
    *,
    std_floor: float = 0.0,
    scale_by_std: bool = True,
    step_gamma: float = 0.95,
    step_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Advantages of the critic-free estimators for one rollout.

    Every episode's return is the plain sum of its rewards (penalties and the KL term included), the episode-level
    score of GRPO, RLOO and GiGPO. An episode belongs to a round (``rounds``); a round is *complete* when every one of
    its episodes ended within the rollout, and only complete rounds are compared (an episode cut off by the rollout's
    end has no return yet). Steps outside complete rounds get advantage 0 and ``False`` in the returned mask.

    - ``"grpo"``: `group_normalize` of the episode returns within the round, given to every step of the episode.
    - ``"rloo"``: `leave_one_out_advantages` of the episode returns, likewise.
    - ``"gigpo"`` (arXiv 2505.10978): the GRPO episode advantage ``A^E`` plus ``step_weight`` (ω) times a step-level
      one ``A^S``: the steps of a round whose states are identical (equal ``state_keys``) form a step group (the
      paper's anchor-state groups; verl-agent's ``build_step_group``), and their `discounted_returns` (discount
      ``step_gamma``) are normalised within it (`group_normalize`; a step group of one gets ``A^S = 0``).

    Args:
        rewards, done: ``(num_steps, num_envs)``; ``done`` is ``terminated | truncated`` (a time limit ends the
            episode too: its return is what it earned, as in verl-agent).
        rounds: ``(num_steps, num_envs)`` long: the round of each step (ids shared by the envs of one group's round),
            ``-1`` for steps that belong to none (an env waiting for its group to finish).
        state_keys: ``num_steps * num_envs`` hashables, step-major (``t * num_envs + e``); only ``"gigpo"`` reads
            them.

    Returns:
        ``(advantages, included, stats)``: ``(num_steps, num_envs)`` advantages and bool mask, and
        ``{"grouped_fraction", "step_group_fraction"}`` (the share of steps in complete rounds and, for GiGPO, the
        share of those in a step group of more than one step: the premise of its step level).
    """
    if estimator not in GROUP_ESTIMATORS:
        raise ValueError(f"Unknown group estimator {estimator!r}; use one of {GROUP_ESTIMATORS}.")
    num_steps, num_envs = rewards.shape
    done = done.bool()
    # Episodes: consecutive steps of one env within one round, up to and including a done step.
    episode = torch.full((num_steps, num_envs), -1, dtype=torch.long)
    episode_round, episode_ended, returns = [], [], []
    for e in range(num_envs):
        current = -1
        for t in range(num_steps):
            r = int(rounds[t, e])
            if r < 0:
                current = -1
                continue
            if current < 0 or episode_round[current] != r or episode_ended[current]:
                current = len(episode_round)
                episode_round.append(r)
                episode_ended.append(False)
                returns.append(0.0)
            episode[t, e] = current
            returns[current] += float(rewards[t, e])
            episode_ended[current] = bool(done[t, e])
    complete_rounds = set(episode_round) - {r for r, ended in zip(episode_round, episode_ended) if not ended}
    kept = [k for k, r in enumerate(episode_round) if r in complete_rounds]
    advantages = torch.zeros(num_steps, num_envs)
    included = torch.zeros(num_steps, num_envs, dtype=torch.bool)
    stats = {"grouped_fraction": 0.0, "step_group_fraction": float("nan")}
    if not kept:
        return advantages, included, stats
    scores = torch.tensor([returns[k] for k in kept])
    groups = _group_index([episode_round[k] for k in kept])
    if estimator == "rloo":
        per_episode = leave_one_out_advantages(scores, groups)
    else:
        per_episode = group_normalize(scores, groups, std_floor, scale_by_std)
    episode_advantage = torch.zeros(len(episode_round))
    episode_advantage[torch.tensor(kept)] = per_episode
    included = (episode >= 0) & torch.isin(episode, torch.tensor(kept))
    advantages[included] = episode_advantage[episode[included]]
    stats["grouped_fraction"] = float(included.float().mean())
    if estimator == "gigpo":
        if state_keys is None or len(state_keys) != num_steps * num_envs:
            raise ValueError("GiGPO needs one state key per step (`state_keys`, step-major).")
        steps = included.reshape(-1).nonzero().squeeze(-1)  # flat step-major indices, t * num_envs + e
        flat_rounds = rounds.reshape(-1)
        step_groups = _group_index([(int(flat_rounds[i]), state_keys[i]) for i in steps.tolist()])
        step_returns = discounted_returns(rewards, done, step_gamma).reshape(-1)[steps]
        step_advantage = group_normalize(step_returns, step_groups, std_floor, scale_by_std)
        flat = advantages.reshape(-1)
        flat[steps] += step_weight * step_advantage
        advantages = flat.reshape(num_steps, num_envs)
        sizes = torch.bincount(step_groups)[step_groups]
        stats["step_group_fraction"] = float((sizes > 1).float().mean())
    return advantages, included, stats
