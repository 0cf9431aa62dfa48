"""The multi-step probe envs (`vlm_env_ppo.envs.multistep_probes`): API conformance, seeding, and their reward /
termination / truncation structure under hand-scripted policies, including the chance levels and optima their
docstrings state."""

from fractions import Fraction

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vlm_env_ppo.envs  # noqa: F401 - registers the ids
from vlm_env_ppo.envs import ACTION_NAMES
from vlm_env_ppo.envs.multistep_probes import DelayedCreditEnv, GridNavEnv, MemoryEnv, TrapEnv
from vlm_env_ppo.probes import PROBE_SETTINGS
from vlm_env_ppo.tasks import get_task

PROBES = {
    "vlm_env_ppo/DelayedCredit-v0": DelayedCreditEnv,
    "vlm_env_ppo/Trap-v0": TrapEnv,
    "vlm_env_ppo/Memory-v0": MemoryEnv,
    "vlm_env_ppo/GridNav-v0": GridNavEnv,
}


def play(env, policy, seed):
    """One episode with ``policy(t, first_frame) -> action``: (rewards, terminated, truncated, final info)."""
    first, _ = env.reset(seed=seed)
    rewards, t = [], 0
    while True:
        _, reward, terminated, truncated, info = env.step(policy(t, first))
        rewards.append(reward)
        t += 1
        if terminated or truncated:
            return rewards, terminated, truncated, info


def cue_of(frame) -> int:
    """0 (red) or 1 (blue): the cue colour of a first frame, read from its mean pixel."""
    r, _, b = frame.reshape(-1, 3).mean(axis=0)
    return int(b > r)


@pytest.mark.parametrize("env_id", sorted(PROBES))
def test_probe_envs_pass_the_gymnasium_checker_and_are_registered(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=False)
    assert isinstance(env.unwrapped, PROBES[env_id])
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.render_mode == "rgb_array" and np.array_equal(env.render(), obs)
    task = get_task(env_id)
    assert task.action_names == ACTION_NAMES[env_id] == PROBES[env_id].ACTION_NAMES
    assert env.action_space.n == len(task.action_names)
    for section in ("Description", "Action Space", "Observation Space", "Rewards", "Episode End", "Arguments",
                    "Version History"):
        assert f"## {section}" in PROBES[env_id].__doc__, section
    assert env_id in PROBE_SETTINGS


@pytest.mark.parametrize("env_id", sorted(PROBES))
def test_probe_envs_are_deterministic_on_their_seed(env_id):
    """Same seed and actions: same frames, rewards and ends; another seed: other frames (the noise, at least)."""

    def trajectory(seed):
        env = PROBES[env_id]()
        frames = [env.reset(seed=seed)[0]]
        rng = np.random.default_rng(0)  # the same action sequence for every seed
        for _ in range(8):
            obs, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            frames.append(obs)
            frames.append(np.array([reward, terminated, truncated]))
            if terminated or truncated:
                frames.append(env.reset()[0])  # continues the seeded stream
        return frames

    a, b, c = trajectory(3), trajectory(3), trajectory(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_delayed_credit_pays_the_first_answer_delay_steps_later():
    env = DelayedCreditEnv(delay=2)
    for seed in range(20):
        right = lambda t, first: cue_of(first) if t == 0 else seed % 2  # noqa: E731 - later actions must not matter
        rewards, terminated, truncated, info = play(env, right, seed)
        assert rewards == [0.0, 0.0, 1.0] and terminated and not truncated and info["is_success"]
        wrong = lambda t, first: 1 - cue_of(first) if t == 0 else cue_of(first)  # noqa: E731 - late answer is too late
        rewards, _, _, info = play(env, wrong, seed)
        assert rewards == [0.0, 0.0, 0.0] and not info["is_success"]
    frames = [env.reset(seed=0)[0]] + [env.step(0)[0] for _ in range(2)]
    assert cue_of(frames[0]) in (0, 1) and all(abs(f.mean() - 128) < 5 for f in frames[1:]), "later frames: grey"


def test_delayed_credit_and_memory_chance_is_one_half():
    """Both cues are equally likely, so any policy blind to the cue at the decisive step succeeds half the time."""
    for env in (DelayedCreditEnv(), MemoryEnv()):
        cues = [cue_of(env.reset(seed=s)[0]) for s in range(2000)]
        assert abs(np.mean(cues) - 0.5) < 0.04
        always_red = np.mean([play(env, lambda t, first: 0, s)[3]["is_success"] for s in range(2000)])
        assert abs(always_red - 0.5) < 0.04


def test_memory_counts_only_the_last_answer():
    env = MemoryEnv(delay=2)
    for seed in range(20):
        # the cue named at the last step only: success; named everywhere but the last step: failure
        rewards, terminated, _, info = play(env, lambda t, first: cue_of(first) if t == 2 else 1 - cue_of(first), seed)
        assert rewards == [0.0, 0.0, 1.0] and terminated and info["is_success"]
        rewards, _, _, info = play(env, lambda t, first: 1 - cue_of(first) if t == 2 else cue_of(first), seed)
        assert rewards == [0.0, 0.0, 0.0] and not info["is_success"]
    frames = [env.reset(seed=0)[0]] + [env.step(0)[0] for _ in range(2)]
    assert all(abs(f.mean() - 128) < 5 for f in frames[1:]), "the cue must be off screen after the first frame"


def test_trap_pays_small_now_or_large_later():
    env = TrapEnv(length=3, small_reward=0.5)
    rewards, terminated, truncated, info = play(env, lambda t, first: 1, seed=0)  # optimal: always walk on
    assert rewards == [0.0, 0.0, 1.0] and terminated and not truncated and info["is_success"]
    rewards, terminated, _, info = play(env, lambda t, first: 0, seed=0)  # myopic: the small prize at once
    assert rewards == [0.5] and terminated and not info["is_success"] and info["small_prize"]
    rewards, _, _, info = play(env, lambda t, first: int(t < 2), seed=0)  # gives up at the last cell
    assert rewards == [0.0, 0.0, 0.5] and info["small_prize"]
    gamma = 0.9  # the trainer's default: from the first cell the large prize is worth more than the small one
    assert gamma ** (env.length - 1) * 1.0 > env.small_reward
    # chance: walk on at each of the 3 cells
    wins = np.mean([play(env, lambda t, first, r=np.random.default_rng(s): int(r.integers(2)), s)[3]["is_success"]
                    for s in range(4000)])
    assert abs(wins - 0.5**3) < 0.02 and PROBE_SETTINGS["vlm_env_ppo/Trap-v0"]["chance"] == 0.5**3
    shades = []
    for t in range(3):  # each cell its own shade: the critic can tell how far the agent got
        obs = env.reset(seed=0)[0] if t == 0 else env.step(1)[0]
        shades.append(obs.mean())
    assert shades[0] < shades[1] < shades[2]


def gridnav_chance(max_steps: int) -> Fraction:
    """Exact success probability of uniformly random play within ``max_steps`` (dynamic programming on cells)."""

    def p(cell, steps):
        if cell == (1, 0):
            return Fraction(1)
        if steps == 0:
            return Fraction(0)
        return sum(p(GridNavEnv.move(cell, a), steps - 1) for a in range(3)) / 3

    return p((0, 0), max_steps)


def test_gridnav_way_round_the_wall_truncation_and_chance():
    env = GridNavEnv()
    rewards, terminated, truncated, info = play(env, lambda t, first: (1, 2, 0)[t], seed=0)  # right, down, left
    assert rewards == [0.0, 0.0, 1.0] and terminated and not truncated and info["is_success"]
    for action in range(3):  # every always-same-action policy gets stuck and is cut by the time limit
        rewards, terminated, truncated, info = play(env, lambda t, first, a=action: a, seed=0)
        assert len(rewards) == env.max_steps and truncated and not terminated and not info["is_success"]
        assert sum(rewards) == 0.0
    env.reset(seed=0)
    assert GridNavEnv.move((0, 0), 2) == (0, 0), "the wall: no way straight down to the goal"
    # each state has its own colour, the agent's quadrant lit and the rest dark
    colours = set()
    for actions in ((), (1,), (1, 2)):
        obs = env.reset(seed=0)[0]
        for a in actions:
            obs = env.step(a)[0]
        lit = [obs[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32].mean() > 60 for r in range(2) for c in range(2)]
        assert sum(lit) == 1
        colours.add(tuple(np.round(obs.reshape(-1, 3).mean(axis=0) / 20)))
    assert len(colours) == 3
    assert gridnav_chance(5) == Fraction(14, 81)
    assert PROBE_SETTINGS["vlm_env_ppo/GridNav-v0"]["chance"] == pytest.approx(float(gridnav_chance(env.max_steps)))
    wins = np.mean([play(env, lambda t, first, r=np.random.default_rng(s): int(r.integers(3)), s)[3]["is_success"]
                    for s in range(4000)])
    assert abs(wins - 14 / 81) < 0.02


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DelayedCreditEnv(delay=0), "delay"),
        (lambda: MemoryEnv(delay=0), "delay"),
        (lambda: TrapEnv(length=1), "length"),
        (lambda: TrapEnv(small_reward=1.5), "small_reward"),
        (lambda: GridNavEnv(max_steps=2), "max_steps"),
        (lambda: GridNavEnv(size=63), "even"),
        (lambda: TrapEnv(render_mode="human"), "rgb_array"),
    ],
)
def test_probe_envs_reject_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
