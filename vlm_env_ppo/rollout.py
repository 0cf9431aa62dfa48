"""Environment side of the rollout: vector env construction, per-env infos, episode statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

EnvSpec = str | Callable[[], gym.Env] | VectorEnv


def make_vector_env(env: EnvSpec, num_envs: int, env_kwargs: dict | None = None) -> VectorEnv:
    """A vector env with same-step autoreset from an env id, a zero-argument factory, or a `VectorEnv`.

    Same-step autoreset returns the first observation of the next episode right away and the last one in
    ``info["final_obs"]``, which is what a truncated episode's bootstrap value needs. A next-step autoreset env would
    spend one generation per episode on a step whose action is ignored.
    """
    if isinstance(env, VectorEnv):
        mode = env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"The vector env uses autoreset mode {mode}; build it with "
                "`autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP`, or pass an env id or a factory."
            )
        if env.num_envs != num_envs:
            raise ValueError(f"The vector env has {env.num_envs} envs but `num_envs={num_envs}`; make them agree.")
        return env
    if isinstance(env, gym.Env):
        raise TypeError(
            "Pass an env id, a zero-argument factory (e.g. `lambda: MyEnv()`), or a gymnasium VectorEnv, not an env "
            "instance: each of the `num_envs` parallel envs needs its own copy."
        )
    if isinstance(env, str):
        env_id, kwargs = env, dict(env_kwargs or {})
        factory = lambda: gym.make(env_id, **kwargs)  # noqa: E731
    elif callable(env):
        if env_kwargs:
            raise ValueError("`env_kwargs` only applies to env ids; bake the arguments into your factory.")
        factory = env
    else:
        raise TypeError(f"`env` must be an env id, a factory or a VectorEnv, got {type(env).__name__}.")
    return SyncVectorEnv([factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)


def unbatch_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Vector-env info (dict of arrays with ``_key`` masks) → one plain dict per env."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}", np.ones(num_envs, dtype=bool))
        for i in range(num_envs):
            if mask[i]:
                out[i][key] = unbatch_infos(value, num_envs)[i] if isinstance(value, dict) else value[i]
    return out


def episode_success(final_info: dict[str, Any], reward: float, terminated: bool) -> bool:
    """An episode succeeded if the env says so (``is_success``/``success``) or it terminated with a positive reward.

    The second rule fits the gym_cards tasks: NumberLine's +1 on reaching the target, +10 for a correct formula,
    Blackjack's +1 for a win.
    """
    for key in ("is_success", "success"):
        if key in final_info:
            return bool(final_info[key])
    return bool(terminated and reward > 0)


@dataclass
class EpisodeStats:
    """Running per-env returns/lengths and the episodes finished since the last `pop`."""

    num_envs: int
    returns: np.ndarray = field(init=False)
    lengths: np.ndarray = field(init=False)
    finished: list[tuple[float, int, bool]] = field(default_factory=list)
    total_episodes: int = 0

    def __post_init__(self):
        self.returns = np.zeros(self.num_envs)
        self.lengths = np.zeros(self.num_envs, dtype=np.int64)

    def step(self, rewards, terminated, truncated, final_infos: list[dict]) -> None:
        self.returns += rewards
        self.lengths += 1
        for i in np.flatnonzero(np.logical_or(terminated, truncated)):
            success = episode_success(final_infos[i], float(rewards[i]), bool(terminated[i]))
            self.finished.append((float(self.returns[i]), int(self.lengths[i]), success))
            self.total_episodes += 1
            self.returns[i], self.lengths[i] = 0.0, 0

    def pop(self) -> list[tuple[float, int, bool]]:
        finished, self.finished = self.finished, []
        return finished
