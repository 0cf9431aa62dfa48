"""Group rollouts for the critic-free estimators (``advantage_estimator`` "grpo", "rloo", "gigpo").

GRPO, RLOO and GiGPO compare episodes that start from the same initial state. The `num_envs` envs of a process are cut
into groups of `group_size` consecutive envs, and every env of a group is reset on the same seed, so a group's episodes
start identically (a *round*: `group_size` episodes, one per env). Rollouts have a fixed length (`num_steps`) while
episodes end at different times, so a round is run this way:

- Every rollout starts every group on a fresh shared seed (the episodes in progress at the end of the last rollout
  are dropped: a group estimator needs whole episodes).
- An env whose episode ended waits for its group: it keeps acting (the vector env steps every env), but those steps
  belong to no round and get advantage 0, so they add nothing to the update.
- When every env of a group has ended its episode, the group restarts together on a new shared seed: a new round.
- A round still running when the rollout ends is dropped whole (its returns are not known yet).

Why this rather than keeping every episode: only whole rounds have one initial state and a known return for every
member, and dropping whole rounds keeps each comparison between episodes of the same start. The cost is the steps
of waiting envs and of the dropped last round, logged per update as ``advantages/grouped_fraction`` (the share of
steps that count). It is zero waste when every episode has the same length and `num_steps` is a multiple of it, and
with `num_steps` equal to the env's time limit each group plays exactly one round per rollout that always completes:
verl-agent's and the GiGPO paper's setting (one episode per env per iteration, finished envs inactive).

`AdvantageMixin` holds the trainer's advantage phase (GAE, or these estimators) and their rollout side (reset, track,
restart); `vlm_env_ppo.advantages` holds the math. `VLMPPOTrainer` mixes it in.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .advantages import (
    GROUP_ESTIMATORS,
    compute_gae,
    group_relative_advantages,
    normalize_advantages,
    spread_back_in_episodes,
)
from .buffer import RolloutBatch, Sample
from .faults import nonfinite_samples
from .rollout import unbatch_infos


def state_key(sample: Sample) -> str:
    """The identity of a step's state for GiGPO's step groups: a hash of the prompt inputs the policy acts on (token
    ids, image pixels and every other processor output), i.e. the frame and the text state it reads, history turns
    included when ``history_length > 0``. Two steps share a key only when the policy saw exactly the same input, the
    paper's "identical anchor state" (verl-agent hashes its ``anchor_obs`` likewise)."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(sample):
        tensor = sample[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class AdvantageMixin:
    """`VLMPPOTrainer`'s advantage phase (`compute_advantages`: GAE, or the group estimators) and the round bookkeeping
    of the group estimators' rollouts (`collect_rollout` calls `_start_group_rollout` and `_track_groups`)."""

    def compute_advantages(self, batch: RolloutBatch) -> None:
        """Phase 2 of `train`: advantages (and returns) of the rollout, by ``advantage_estimator``: GAE with the value
        head, normalised over all processes, or a group estimator (`_group_advantages`)."""
        if self.args.advantage_estimator != "gae":
            return self._group_advantages(batch)
        # A non-finite rollout statistic (e.g. a bf16 overflow in the scoring forward) must not poison GAE: it would
        # spread to every earlier step of that env and, through whitening, to the whole batch. It enters GAE as 0, and
        # its sample and the earlier samples of its episode (whose advantages were bootstrapped through that 0) get a
        # NaN advantage and return, so the minibatches holding them are skipped (`ppo_update`).
        nonfinite = nonfinite_samples(batch)  # (num_steps, num_envs)
        self._nonfinite_samples = int(nonfinite.sum())
        bad = spread_back_in_episodes(nonfinite, batch.terminated | batch.truncated)
        finite = lambda x: torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
        advantages, returns = compute_gae(
            finite(batch.rewards),
            finite(batch.values),
            batch.terminated,
            batch.truncated,
            finite(batch.final_values),
            finite(batch.next_value),
            self.args.gamma,
            self.args.lam,
        )
        advantages[bad], returns[bad] = float("nan"), float("nan")
        batch.returns = returns
        self._advantage_stats = {}
        if self.args.whiten_advantages:
            # Global statistics: every process normalises with the mean/std of all processes' advantages.
            all_advantages = self.accelerator.gather(advantages.to(self.accelerator.device)).cpu()
            advantages, stats = normalize_advantages(advantages, self.args.advantage_std_floor, all_advantages)
            self._advantage_stats = {"advantages/raw_std": stats["std"], "advantages/scale": stats["scale"]}
        batch.advantages = advantages

    @property
    def uses_groups(self) -> bool:
        return self.args.advantage_estimator in GROUP_ESTIMATORS

    def _restart_groups(self, groups: np.ndarray) -> None:
        """Reset the envs of ``groups`` (bool per group), each group on one fresh seed, and start a round for each."""
        size = self.args.group_size
        mask = np.repeat(groups, size)
        seeds = [None] * self.args.num_envs
        for g in np.flatnonzero(groups):
            seed = int(self._np_rng.integers(2**31 - 1))
            for e in range(g * size, (g + 1) * size):
                seeds[e] = seed
        obs, infos = self.envs.reset(seed=seeds, options={"reset_mask": mask})
        infos = unbatch_infos(infos, self.args.num_envs)
        self._obs = obs
        self._infos = [infos[e] if mask[e] else self._infos[e] for e in range(self.args.num_envs)]
        # The episodes those envs had in progress were cut: their returns must not leak into the next ones.
        self.episode_stats.returns[mask], self.episode_stats.lengths[mask] = 0.0, 0
        for g in np.flatnonzero(groups):
            self._env_round[g * size : (g + 1) * size] = self._next_round
            self._next_round += 1

    def _start_group_rollout(self) -> None:
        self._env_round = np.full(self.args.num_envs, -1, dtype=np.int64)
        self._next_round = 0
        self._restart_groups(np.ones(self.args.num_envs // self.args.group_size, dtype=bool))

    def _track_groups(self, batch: RolloutBatch, t: int, done: np.ndarray) -> None:
        """Record step ``t``'s rounds, mark the envs whose episode just ended as waiting, restart finished groups."""
        batch.rounds[t] = torch.as_tensor(self._env_round)
        self._env_round[done & (self._env_round >= 0)] = -1
        finished = (self._env_round.reshape(-1, self.args.group_size) < 0).all(axis=1)
        if finished.any() and t < batch.num_steps - 1:
            self._restart_groups(finished)

    def _group_advantages(self, batch: RolloutBatch) -> None:
        """Advantages of GRPO / RLOO / GiGPO (`group_relative_advantages`). No critic: ``returns`` stay 0. A sample with
        a non-finite log-prob or reward poisons its round's comparison, so the whole round gets a NaN advantage (the
        minibatches holding it are skipped, as for GAE)."""
        args = self.args
        nonfinite = nonfinite_samples(batch)  # (num_steps, num_envs)
        self._nonfinite_samples = int(nonfinite.sum())
        rewards = torch.nan_to_num(batch.rewards.float(), nan=0.0, posinf=0.0, neginf=0.0)
        keys = [state_key(p) for p in batch.prompts] if args.advantage_estimator == "gigpo" else None
        advantages, _, stats = group_relative_advantages(
            args.advantage_estimator, rewards, batch.terminated | batch.truncated, batch.rounds, keys,
            std_floor=args.advantage_std_floor, scale_by_std=args.scale_group_advantages,
            step_gamma=args.gigpo_gamma, step_weight=args.gigpo_step_weight,
        )
        bad_rounds = batch.rounds[nonfinite & (batch.rounds >= 0)].unique()
        bad = nonfinite | torch.isin(batch.rounds, bad_rounds)
        advantages[bad] = float("nan")
        batch.advantages, batch.returns = advantages, torch.zeros_like(advantages)
        self._advantage_stats = {"advantages/grouped_fraction": stats["grouped_fraction"]}
        if args.advantage_estimator == "gigpo":
            self._advantage_stats["advantages/step_group_fraction"] = stats["step_group_fraction"]
