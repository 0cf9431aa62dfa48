"""FrozenLake-v0 (`vlm_env_ppo.envs.frozen_lake`): random maps per seed on gymnasium's dynamics, each published preset,
the exact expert and its demonstrations."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vlm_env_ppo.envs  # noqa: F401 - registers the ids
from vlm_env_ppo.demonstrations import frozen_lake_expert
from vlm_env_ppo.envs.frozen_lake import AGENT, GOAL, HOLE, ICE, RULES, FrozenLakeEnv, _solve
from vlm_env_ppo.tasks import RANDOM_FROZEN_LAKE, RANDOM_FROZEN_LAKE_TEXT, get_task

LEFT, DOWN, RIGHT, UP = range(4)
MAP = ["SFFF", "FHFH", "FFFH", "HFFG"]  # gymnasium's 4x4 map
OPEN = ["SFFF", "FFFF", "FFFF", "FFFG"]  # no hole


def test_registered_and_passes_the_gymnasium_checker():
    env = gym.make("vlm_env_ppo/FrozenLake-v0")
    check_env(env.unwrapped, skip_render_check=False)
    obs, info = env.reset(seed=0)
    assert obs.shape == (128, 128, 3) and np.array_equal(env.render(), obs)
    assert get_task("vlm_env_ppo/FrozenLake-v0") is RANDOM_FROZEN_LAKE
    assert RANDOM_FROZEN_LAKE.action_names == FrozenLakeEnv.ACTION_NAMES == ("left", "down", "right", "up")
    assert info["grid_text"] in RANDOM_FROZEN_LAKE_TEXT.prompt(info) and info["grid_text"].startswith("P")
    for section in ("Description", "Action Space", "Observation Space", "Rewards", "Episode End", "Arguments",
                    "Version History"):
        assert f"## {section}" in FrozenLakeEnv.__doc__, section


def test_maps_are_random_per_seed_and_deterministic():
    env = FrozenLakeEnv()
    maps = [tuple(env.reset(seed=s)[1]["map"]) for s in range(30)]
    assert maps == [tuple(env.reset(seed=s)[1]["map"]) for s in range(30)]
    assert len(set(maps)) >= 20 and all(m[0][0] == "S" and m[-1][-1] == "G" for m in maps)
    holes = np.mean([sum(row.count("H") for row in m) / 16 for m in maps])
    assert 0.05 < holes < 0.35, "about 1 - p = 0.2 of the cells are holes"


def test_moves_holes_and_goal_on_gymnasium_map():
    env = FrozenLakeEnv(rules="vagen")
    obs, info = env.reset(seed=0, options={"map": MAP})
    assert info["grid_text"].splitlines() == ["P___", "_O_O", "___O", "O__G"]
    assert tuple(obs[16, 16]) == AGENT and tuple(obs[48, 48]) == HOLE and tuple(obs[112, 112]) == GOAL
    assert tuple(obs[16, 80]) == ICE
    _, reward, terminated, _, info = env.step(UP)  # into the edge: stays
    assert info["grid_text"].startswith("P") and reward == 0 and not terminated
    env.step(RIGHT)
    _, reward, terminated, truncated, info = env.step(DOWN)  # (1, 1) is a hole
    assert terminated and not truncated and reward == 0 and not info["is_success"] and "X" in info["grid_text"]
    env.reset(seed=0, options={"map": MAP})
    for a in (DOWN, DOWN, RIGHT, RIGHT, DOWN, RIGHT):
        _, reward, terminated, _, info = env.step(a)
    assert terminated and reward == 1.0 and info["is_success"] and info["grid_text"].endswith("√")


@pytest.mark.parametrize("rules, slippery, cap", [("vagen", False, 100), ("ragen", True, 10), ("roll", True, 10),
                                                   ("gymnasium", True, 100)])
def test_each_preset_sets_its_published_values(rules, slippery, cap):
    env = FrozenLakeEnv(rules=rules)
    assert (env.size, env.p, env.is_slippery, env.max_steps) == (4, 0.8, slippery, cap) and RULES[rules].source
    env.reset(seed=0, options={"map": OPEN})
    ends = [env.step(UP)[2:4] for _ in range(cap)]  # pushing into the top edge never ends the episode early
    if not slippery:
        assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1])
    # slippery ice: the same action goes three ways
    env = FrozenLakeEnv(rules=rules, max_steps=200)
    env.reset(seed=1, options={"map": OPEN})
    cells = set()
    for _ in range(40):
        env.reset(options={"map": OPEN})
        env.step(RIGHT)
        cells.add(env.cell)
    assert cells == ({1, 4, 0} if slippery else {1})


def test_expert_is_optimal_and_its_demonstrations_parse():
    """Non-slippery (VAGEN): the expert reaches the goal on every map; slippery (gymnasium's rules): its success
    matches the exact success probability the value iteration predicts."""
    for rules, episodes in (("vagen", 40), ("gymnasium", 100)):
        env = FrozenLakeEnv(rules=rules)
        wins, predicted = 0, 0.0
        for seed in range(episodes):
            obs, info = env.reset(seed=seed)
            predicted += _solve(tuple(env.desc), env.is_slippery, env.max_steps)[1][0]
            while True:
                action, thoughts = frozen_lake_expert(obs, info, env)
                answer = RANDOM_FROZEN_LAKE.example_answer(action, thoughts=thoughts)
                assert RANDOM_FROZEN_LAKE.parse_action(answer, info).action == action
                obs, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            wins += info["is_success"]
        if rules == "vagen":
            assert wins == episodes
        else:
            assert abs(wins / episodes - predicted / episodes) < 0.1


@pytest.mark.parametrize("kwargs, message", [(dict(rules="arctic"), "Unknown FrozenLake rules"), (dict(size=1), "size"),
                                             (dict(p=0.0), "p in"), (dict(render_mode="human"), "rgb_array")])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrozenLakeEnv(**kwargs)
    with pytest.raises(ValueError, match="S/F/H/G"):
        FrozenLakeEnv().reset(seed=0, options={"map": ["SFF", "FFG"]})
