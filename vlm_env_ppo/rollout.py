"""Environment side of the rollout: vector env construction, per-env infos, episode statistics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

logger = logging.getLogger(__name__)

EnvSpec = str | Callable[[], gym.Env] | VectorEnv


class EnvFaultError(RuntimeError):
    """The environment kept failing (more than `max_consecutive_env_errors` faults in a row of one env, or any
    exception from a `VectorEnv` passed in). The trainer writes a checkpoint first and names it in the message and in
    ``checkpoint``."""

    checkpoint: str | None = None


class FaultTolerantEnv(gym.Wrapper):
    """An env that survives exceptions in its own ``reset``/``step`` (issue 7).

    When the wrapped env raises, it is closed and recreated from ``factory`` and reset on a seed drawn from an RNG
    seeded by the last seeded ``reset`` (so recovery is reproducible). A failed ``step`` returns the new env's first
    observation with reward 0, ``terminated=False``, ``truncated=True`` and ``info["env_error"]`` (the exception's
    repr): the episode ends there and, because of ``env_error``, the trainer does not bootstrap from it (a broken state
    has no meaningful value). A failed ``reset`` returns the recreated env's reset, also with ``info["env_error"]``.

    ``errors`` counts every exception; ``consecutive_errors`` those since the last successful ``step``. When it exceeds
    ``max_consecutive_errors`` an `EnvFaultError` is raised (``0``: the first exception is fatal).
    """

    def __init__(self, factory: Callable[[], gym.Env], max_consecutive_errors: int = 5):
        super().__init__(factory())
        self._factory = factory
        self.max_consecutive_errors = max_consecutive_errors
        self.errors = 0
        self.consecutive_errors = 0
        self._recovery_rng: np.random.Generator | None = None

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._recovery_rng = np.random.default_rng(seed)
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as exc:  # noqa: BLE001 - any env bug: counted, logged, recovered from (issue 7)
            return self._recover(exc, options)

    def step(self, action):
        try:
            result = self.env.step(action)
        except Exception as exc:  # noqa: BLE001
            obs, info = self._recover(exc, None)
            return obs, 0.0, False, True, info
        self.consecutive_errors = 0
        return result

    def _recover(self, exc: Exception, options) -> tuple[Any, dict]:
        while True:
            self.errors += 1
            self.consecutive_errors += 1
            if self.consecutive_errors > self.max_consecutive_errors:
                raise EnvFaultError(
                    f"An environment raised {self.consecutive_errors} times in a row, more than "
                    f"`max_consecutive_env_errors={self.max_consecutive_errors}`; last error: {exc!r}. Fix the env "
                    "(the traceback above shows where it raised) or raise the limit."
                ) from exc
            logger.warning("The env raised %r; recreating it (%d in a row).", exc, self.consecutive_errors)
            with contextlib.suppress(Exception):
                self.env.close()
            seed = int(self._recovery_rng.integers(2**31 - 1)) if self._recovery_rng is not None else None
            try:
                self.env = self._factory()
                obs, info = self.env.reset(seed=seed, options=options)
            except Exception as new_exc:  # noqa: BLE001 - the recreated env failed too: counts as another fault
                exc = new_exc
                continue
            return obs, {**info, "env_error": repr(exc)[:500]}


def make_vector_env(
    env: EnvSpec,
    num_envs: int,
    env_kwargs: dict | None = None,
    max_consecutive_errors: int | None = None,
    wrap: Callable[[gym.Env], gym.Env] | None = None,
) -> VectorEnv:
    """A vector env with same-step autoreset from an env id, a zero-argument factory, or a `VectorEnv`.

    Same-step autoreset returns the first observation of the next episode right away and the last one in
    ``info["final_obs"]``, which is what a truncated episode's bootstrap value needs. A next-step autoreset env would
    spend one generation per episode on a step whose action is ignored.

    Each env built from an id or a factory is adapted for a VLM agent (`vlm_env_ppo.envs.adapter.adapt_env`: frames
    from ``render()`` for envs whose observations are not pictures, their text in ``info["observation_text"]``), then
    passed through ``wrap`` (e.g. a `HistoryWrapper`). With ``max_consecutive_errors`` (not None), each is then a
    `FaultTolerantEnv`. A `VectorEnv` passed in is used as is: it cannot be rebuilt one env at a time.
    """
    from .envs.adapter import adapted_factory

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
        make = adapted_factory(env, **(env_kwargs or {}))
    elif callable(env):
        if env_kwargs:
            raise ValueError("`env_kwargs` only applies to env ids; bake the arguments into your factory.")
        make = adapted_factory(env)
    else:
        raise TypeError(f"`env` must be an env id, a factory or a VectorEnv, got {type(env).__name__}.")
    factory = make if wrap is None else (lambda: wrap(make()))
    if max_consecutive_errors is not None:
        unguarded = factory
        factory = lambda: FaultTolerantEnv(unguarded, max_consecutive_errors)
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
