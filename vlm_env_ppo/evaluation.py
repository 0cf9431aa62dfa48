"""Evaluation on fixed seeds: play episodes with any batched actor, aggregate success, return, length and invalid
outputs (`evaluate_episodes`, `EvalResult`). Used by `VLMPPOTrainer.evaluate`, `VLMAgent.evaluate`, SFT's
`evaluate_policy` and the replays (`random_legal_action`: what an invalid output plays outside training)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from transformers import set_seed

from .actions import ParsedAction
from .rollout import episode_success
from .tasks import Task


@dataclass(frozen=True)
class EpisodeRecord:
    """One evaluated episode: its index ``k`` (reset with ``seed + k``), return, length, success, invalid outputs."""

    index: int
    episode_return: float
    length: int
    success: bool
    invalid_steps: int


@dataclass
class EvalResult:
    success_rate: float
    mean_return: float
    mean_episode_length: float
    invalid_action_rate: float
    num_episodes: int
    returns: list[float]
    episodes: list[EpisodeRecord] = field(default_factory=list)

    @classmethod
    def from_episodes(cls, episodes: Sequence[EpisodeRecord]) -> EvalResult:
        """Aggregate per-episode records (in episode order); the invalid-action rate is over all steps."""
        episodes = sorted(episodes, key=lambda e: e.index)
        nan = float("nan")
        mean = lambda xs: float(np.mean(xs)) if len(xs) else nan  # noqa: E731
        steps = sum(e.length for e in episodes)
        return cls(
            success_rate=mean([e.success for e in episodes]),
            mean_return=mean([e.episode_return for e in episodes]),
            mean_episode_length=mean([e.length for e in episodes]),
            invalid_action_rate=sum(e.invalid_steps for e in episodes) / max(steps, 1),
            num_episodes=len(episodes),
            returns=[e.episode_return for e in episodes],
            episodes=episodes,
        )

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        return {
            f"{prefix}/success_rate": self.success_rate,
            f"{prefix}/episode_return": self.mean_return,
            f"{prefix}/episode_length": self.mean_episode_length,
            f"{prefix}/invalid_action_rate": self.invalid_action_rate,
            f"{prefix}/episodes": self.num_episodes,
        }


ActBatch = Callable[[list, list[dict]], list[ParsedAction]]


def random_legal_action(task: Task | None, info: dict, action_space, rng: np.random.Generator) -> int:
    """A random legal action index (the fallback for an invalid output outside training)."""
    return task.sample_action(info, rng) if task is not None else int(rng.integers(action_space.n))


def evaluate_episodes(
    act_batch: ActBatch,
    make_env: Callable[[], gym.Env],
    num_episodes: int,
    seed: int,
    batch_size: int = 8,
    max_episode_steps: int = 1000,
    task: Task | None = None,
    episode_indices: Sequence[int] | None = None,
) -> EvalResult:
    """Play ``num_episodes`` episodes, episode ``k`` reset with ``seed + k``, up to ``batch_size`` at a time.

    ``act_batch(observations, infos)`` returns one `ParsedAction` per env; ``task.to_env_action`` turns its index into
    the env's action (without a task: the index plus the `Discrete` space's ``start``). An invalid output is counted
    and plays a random legal action, as in training (`invalid_action="random"`, the paper) — not a fixed action,
    which would score every invalid output as a success wherever that action happens to be right. Torch is seeded
    with ``seed`` and episode ``k``'s fallback RNG with ``(seed, k)``, so evaluations repeat exactly (greedy ones
    whatever the ``batch_size``). ``episode_indices`` plays only those episodes (a process's share of a distributed
    evaluation; merge the shares' ``episodes`` with `EvalResult.from_episodes`).
    """
    set_seed(seed)
    pending = list(range(num_episodes) if episode_indices is None else episode_indices)[::-1]
    envs = [make_env() for _ in range(min(batch_size, len(pending)))]
    state: list[dict | None] = [None] * len(envs)  # per env: episode index, obs, info, return, length, invalid
    records: list[EpisodeRecord] = []

    def start(i: int) -> None:
        if not pending:
            state[i] = None
            return
        k = pending.pop()
        obs, info = envs[i].reset(seed=seed + k)
        rng = np.random.default_rng((seed, k))
        state[i] = {"k": k, "obs": obs, "info": info, "ret": 0.0, "len": 0, "invalid": 0, "rng": rng}

    for i in range(len(envs)):
        start(i)
    while any(s is not None for s in state):
        active = [i for i, s in enumerate(state) if s is not None]
        parsed = act_batch([state[i]["obs"] for i in active], [state[i]["info"] for i in active])
        for i, p in zip(active, parsed):
            s, env = state[i], envs[i]
            index = p.action if p.valid else random_legal_action(task, s["info"], env.action_space, s["rng"])
            s["invalid"] += not p.valid
            if task is not None:
                action = task.to_env_action(index, s["info"], env.action_space)
            else:
                action = index + int(getattr(env.action_space, "start", 0))
            obs, reward, terminated, truncated, info = env.step(action)
            s["ret"] += float(reward)
            s["len"] += 1
            s["obs"], s["info"] = obs, info
            if terminated or truncated or s["len"] >= max_episode_steps:
                success = episode_success(info, float(reward), bool(terminated))
                records.append(EpisodeRecord(s["k"], s["ret"], s["len"], success, s["invalid"]))
                start(i)
    for env in envs:
        env.close()
    return EvalResult.from_episodes(records)
