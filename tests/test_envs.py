"""The gym_cards envs: gymnasium's checker, registration, seeding, and every rule (both rule sets of the points
games: ours, "exact", and RL4VLM's, "rl4vlm")."""

import importlib
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from vlm_env_ppo import envs
from vlm_env_ppo.envs import ACTION_NAMES, BlackjackEnv, EZPointsEnv, NumberLineEnv, Points24Env
from vlm_env_ppo.envs.formula import BLANK

ENV_IDS = ["gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0", "gym_cards/Points24-v0", "gym_cards/Blackjack-v0"]
NUMBERS = tuple(str(i) for i in range(1, 11))


def make(env_id, **kwargs):
    return gym.make(env_id, **kwargs).unwrapped


def act(env, name):
    """Step with the action called ``name``; returns (obs, reward, terminated, truncated, info)."""
    return env.step(env.action_names.index(name) if hasattr(env, "action_names") else env.ACTION_NAMES.index(name))


def play(env, names):
    """Step through ``names`` and return the list of step results."""
    return [act(env, name) for name in names]


# ---------------------------------------------------------------------------------------------------- gymnasium API
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings count as failures
        check_env(env.unwrapped)
    assert env.spec.entry_point.startswith("vlm_env_ppo.envs.")
    assert env.unwrapped.metadata["render_modes"] == ["rgb_array"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_observation_is_the_rendered_frame(env_id):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    size = 300
    assert env.observation_space == gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
    assert obs.dtype == np.uint8 and obs.shape == (size, size, 3)
    np.testing.assert_array_equal(obs, env.render())
    obs[:] = 0  # the returned frame is a copy: writing to it does not change the env
    assert env.render().any()
    obs, *_ = env.step(0)
    np.testing.assert_array_equal(obs, env.render())


def test_registration_is_idempotent_and_action_names_are_exported():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs)
        envs.register_envs()
    for env_id in ENV_IDS:
        assert env_id in gym.envs.registry
    assert ACTION_NAMES["gym_cards/NumberLine-v0"] == NumberLineEnv.ACTION_NAMES == ("-", "+")
    assert ACTION_NAMES["gym_cards/EZPoints-v0"] == EZPointsEnv.ACTION_NAMES == NUMBERS + ("+", "*", "=")
    assert ACTION_NAMES["gym_cards/Points24-v0"] == Points24Env.ACTION_NAMES == NUMBERS + tuple("+-*/()=")
    assert ACTION_NAMES["gym_cards/Blackjack-v0"] == BlackjackEnv.ACTION_NAMES == ("stand", "hit")
    for env_id in ENV_IDS:
        assert gym.make(env_id).action_space.n == len(ACTION_NAMES[env_id])


def test_builtin_tasks_agree_with_the_envs():
    from vlm_env_ppo.tasks import get_task

    for env_id in ENV_IDS:
        assert get_task(env_id).action_names == ACTION_NAMES[env_id]


# ---------------------------------------------------------------------------------------------------- seeding
def rollout(env_id, seed, steps=200):
    """Frames, rewards, flags and infos of ``steps`` random steps (resetting on episode end), all from ``seed``."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, info = env.reset(seed=seed)
    trace = [(obs, info)]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        trace.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            trace.append(env.reset())
    return trace


def traces_equal(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if len(x) != len(y) or not np.array_equal(x[0], y[0]) or x[1:] != y[1:]:
            return False
    return True


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_episode_different_seed_different(env_id):
    first, again, other = rollout(env_id, 7), rollout(env_id, 7), rollout(env_id, 8)
    assert traces_equal(first, again)
    assert not traces_equal(first, other)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_no_global_randomness(env_id):
    """Seeding the env is enough: the global numpy and Python generators neither matter nor move."""
    import random

    np.random.seed(1)
    random.seed(1)
    a = rollout(env_id, 3, steps=30)
    np.random.seed(2)
    random.seed(2)
    state_np, state_py = np.random.get_state()[1].copy(), random.getstate()
    b = rollout(env_id, 3, steps=30)
    assert traces_equal(a, b)
    np.testing.assert_array_equal(np.random.get_state()[1], state_np)
    assert random.getstate() == state_py


# ---------------------------------------------------------------------------------------------------- NumberLine
def test_number_line_reset_draws_distinct_integers_in_range():
    env = make("gym_cards/NumberLine-v0")
    seen = set()
    for seed in range(300):
        _, info = env.reset(seed=seed)
        assert 0 <= info["Target"] <= 5 and 0 <= info["Current"] <= 5
        assert info["Target"] != info["Current"]
        seen.add((info["Target"], info["Current"]))
    assert len(seen) == 30  # every distinct pair shows up


def test_number_line_rewards_clamping_and_termination():
    env = make("gym_cards/NumberLine-v0")
    env.reset(seed=0, options={"target": 2, "current": 0})
    _, reward, terminated, truncated, info = act(env, "-")  # clamped at 0: distance did not shrink
    assert (reward, terminated, truncated, info["Current"]) == (-1.0, False, False, 0)
    _, reward, terminated, truncated, info = act(env, "+")  # closer
    assert (reward, terminated, truncated, info["Current"]) == (0.0, False, False, 1)
    _, reward, terminated, truncated, info = act(env, "-")  # away
    assert (reward, terminated, info["Current"]) == (-1.0, False, 0)
    act(env, "+")
    _, reward, terminated, truncated, info = act(env, "+")  # on target
    assert (reward, terminated, truncated, info["Current"], info["is_success"]) == (1.0, True, False, 2, True)

    env.reset(seed=0, options={"target": 3, "current": 5})
    _, reward, _, _, info = act(env, "+")  # clamped at max_position
    assert (reward, info["Current"]) == (-1.0, 5)


@pytest.mark.parametrize("max_position", [1, 5, 8])
def test_number_line_truncates_after_two_max_position_steps(max_position):
    env = make("gym_cards/NumberLine-v0", max_position=max_position)
    env.reset(seed=0, options={"target": max_position, "current": 0})
    for step in range(1, 2 * max_position + 1):
        _, reward, terminated, truncated, _ = act(env, "-")
        assert reward == -1.0 and not terminated
        assert truncated == (step == 2 * max_position)
    # Reaching the target on the last allowed step terminates and does not truncate.
    env.reset(seed=0, options={"target": max_position, "current": 0})
    for _ in range(max_position):
        act(env, "-")
    results = play(env, ["+"] * max_position)
    assert results[-1][1:4] == (1.0, True, False)


def test_number_line_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_position"):
        NumberLineEnv(max_position=0)
    env = NumberLineEnv()
    with pytest.raises(ValueError, match="differ"):
        env.reset(options={"target": 1, "current": 1})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Invalid action"):
        env.step(2)


# ---------------------------------------------------------------------------------------------------- EZPoints
def test_ez_points_deals_are_always_solvable_with_sum_or_product():
    env = make("gym_cards/EZPoints-v0")
    products = 0
    for seed in range(400):
        _, info = env.reset(seed=seed)
        a, b = info["Numbers"]
        assert info["solvable"] and info["target"] == 12
        assert a + b == 12 or a * b == 12
        products += a * b == 12 and a + b != 12
        assert all(2 <= n <= 10 for n in (max(a, b),)) and min(a, b) >= 1
        for label, number in zip(info["Cards"], info["Numbers"]):
            assert number == (10 if label in ("J", "Q", "K") else 1 if label == "A" else int(label))
    assert 40 < products < 200  # product half of the time when the first card divides 12


def test_ez_points_win_needs_twelve_and_both_cards():
    env = make("gym_cards/EZPoints-v0")
    env.reset(seed=0, options={"ranks": [13, 2]})  # K counts 10
    assert env.action_names == EZPointsEnv.ACTION_NAMES
    results = play(env, ["10", "+", "2"])
    assert [r[1:4] for r in results] == [(0.0, False, False)] * 3
    assert results[-1][4]["Formula"] == ["10", "+", "2"] and results[-1][4]["formula_text"] == "10 + 2"
    assert results[-1][4]["Cards"] == ["K", "2"] and results[-1][4]["Numbers"] == [10, 2]
    _, reward, terminated, truncated, info = act(env, "=")
    assert (reward, terminated, truncated, info["is_success"]) == (10.0, True, False, True)

    env.reset(seed=0, options={"ranks": [6, 2]})  # 6 * 2 = 12 by product
    play(env, ["6", "*", "2"])
    assert act(env, "=")[1:4] == (10.0, True, False)

    env.reset(seed=0, options={"ranks": [6, 6]})  # a number on two cards can be used twice
    play(env, ["6", "+", "6"])
    assert act(env, "=")[1] == 10.0


@pytest.mark.parametrize(
    "tokens",
    [
        ["10"],  # one card only: value 10, not 12
        ["10", "*", "2"],  # both cards, value 20
        ["10", "+"],  # syntax error
        [],  # empty formula
    ],
)
def test_ez_points_wrong_formula_loses(tokens):
    env = make("gym_cards/EZPoints-v0")
    env.reset(seed=0, options={"ranks": [10, 2]})
    play(env, tokens)
    _, reward, terminated, truncated, info = act(env, "=")
    assert (reward, terminated, truncated, info["is_success"]) == (-1.0, True, False, False)


def test_ez_points_twelve_without_both_cards_loses():
    env = make("gym_cards/EZPoints-v0", treat_face_cards_as_10=False)
    env.reset(seed=0, options={"ranks": [12, 1]})  # Q counts 12: "12" alone is 12 but leaves the ace unused
    play(env, ["12"])
    assert act(env, "=")[1:4] == (-1.0, True, False)
    env.reset(seed=0, options={"ranks": [12, 1]})
    play(env, ["12", "*", "1"])
    assert act(env, "=")[1:4] == (10.0, True, False)


def test_ez_points_invalid_number_appends_a_blank():
    env = make("gym_cards/EZPoints-v0")
    env.reset(seed=0, options={"ranks": [10, 2]})
    _, reward, terminated, truncated, info = act(env, "3")  # not on a card
    assert (reward, terminated, truncated) == (-1.0, False, False)
    assert info["Formula"] == [BLANK] and info["invalid_number"]
    act(env, "2")
    _, reward, *_, info = act(env, "2")  # a second 2: only one 2 on the table
    assert reward == -1.0 and info["Formula"] == [BLANK, "2", BLANK]
    # Blanks are skipped when the formula is evaluated: " 2 " + "*" ... still needs both cards.
    env.reset(seed=0, options={"ranks": [10, 2]})
    play(env, ["5", "10", "+", "2"])
    _, reward, terminated, _, info = act(env, "=")
    assert (reward, terminated) == (10.0, True)


def test_ez_points_truncates_when_the_formula_grows_past_five():
    env = make("gym_cards/EZPoints-v0")
    env.reset(seed=0, options={"ranks": [10, 2]})
    results = play(env, ["+", "*", "+", "*", "+"])
    assert all(r[1:4] == (0.0, False, False) for r in results)
    _, reward, terminated, truncated, info = act(env, "*")
    assert (reward, terminated, truncated) == (-1.0, False, True)
    assert len(info["Formula"]) == 6
    # An invalid number on the over-long step: one −1, still truncated.
    env.reset(seed=0, options={"ranks": [10, 2]})
    play(env, ["+"] * 5)
    _, reward, terminated, truncated, info = act(env, "7")
    assert (reward, terminated, truncated) == (-1.0, False, True)


def test_ez_points_face_cards_can_keep_their_rank():
    env = make("gym_cards/EZPoints-v0", treat_face_cards_as_10=False)
    assert env.action_space.n == 16 and env.action_names[:13] == tuple(str(i) for i in range(1, 14))
    for seed in range(200):
        _, info = env.reset(seed=seed)
        a, b = info["Numbers"]
        assert a + b == 12 or a * b == 12
    env.reset(seed=0, options={"ranks": [11, 1]})  # J = 11, A = 1
    play(env, ["11", "+", "1"])
    assert act(env, "=")[1] == 10.0
    with pytest.raises(ValueError, match="target"):
        EZPointsEnv(target=30)


# ---------------------------------------------------------------------------------------------------- Points24
def test_points24_rational_solution_wins():
    env = make("gym_cards/Points24-v0")
    _, info = env.reset(seed=0, options={"ranks": [8, 3, 8, 3]})
    assert info["solvable"] and info["Cards"] == ["8", "3", "8", "3"]
    play(env, ["8", "/", "(", "3", "-", "8", "/", "3", ")"])
    _, reward, terminated, truncated, info = act(env, "=")
    assert (reward, terminated, truncated, info["is_success"]) == (10.0, True, False, True)


def test_points24_face_cards_count_ten_and_all_four_cards_are_needed():
    env = make("gym_cards/Points24-v0")
    _, info = env.reset(seed=0, options={"ranks": [11, 12, 4, 1]})
    assert info["Cards"] == ["J", "Q", "4", "A"] and info["Numbers"] == [10, 10, 4, 1]
    play(env, ["10", "+", "10", "+", "4"])  # 24, but the ace is unused
    assert act(env, "=")[1:3] == (-1.0, True)
    env.reset(seed=0, options={"ranks": [11, 12, 4, 1]})
    play(env, ["10", "+", "10", "+", "4", "*", "1"])
    assert act(env, "=")[1:3] == (10.0, True)


def test_points24_division_by_zero_and_syntax_errors_lose_without_crashing():
    env = make("gym_cards/Points24-v0")
    env.reset(seed=0, options={"ranks": [4, 4, 6, 1]})
    play(env, ["6", "/", "(", "4", "-", "4", ")", "*", "1"])
    assert act(env, "=")[1:4] == (-1.0, True, False)
    env.reset(seed=0, options={"ranks": [4, 4, 6, 1]})
    play(env, ["(", "(", "6", "*", "4"])
    assert act(env, "=")[1:4] == (-1.0, True, False)
    env.reset(seed=0, options={"ranks": [2, 4, 6, 1]})
    play(env, ["2", "4"])  # two numbers side by side are not 24
    assert act(env, "=")[1] == -1.0


def test_points24_invalid_numbers_and_length_cap():
    env = make("gym_cards/Points24-v0")
    env.reset(seed=0, options={"ranks": [1, 2, 3, 4]})
    _, reward, _, _, info = act(env, "10")
    assert reward == -1.0 and info["Formula"] == [BLANK] and info["invalid_number"]
    results = play(env, ["("] * 19)  # formula length 20: still allowed
    assert all(r[1:4] == (0.0, False, False) for r in results)
    _, reward, terminated, truncated, info = act(env, ")")
    assert (reward, terminated, truncated, len(info["Formula"])) == (-1.0, False, True, 21)


def test_points24_reports_unsolvable_deals():
    env = make("gym_cards/Points24-v0")
    _, info = env.reset(seed=0, options={"ranks": [1, 1, 1, 1]})
    assert info["solvable"] is False
    _, info = env.reset(seed=0, options={"ranks": [13, 13, 13, 13]})  # 10, 10, 10, 10: no
    assert info["solvable"] is False
    _, info = env.reset(seed=0, options={"ranks": [1, 2, 3, 4]})
    assert info["solvable"] is True
    with pytest.raises(ValueError, match="ranks"):
        env.reset(options={"ranks": [1, 2, 3]})


def test_points24_without_face_cards_as_ten():
    env = make("gym_cards/Points24-v0", treat_face_cards_as_10=False)
    assert env.action_space.n == 20
    _, info = env.reset(seed=0, options={"ranks": [12, 13, 1, 1]})
    assert info["Numbers"] == [12, 13, 1, 1]
    play(env, ["12", "+", "13", "-", "1", "*", "1"])
    assert act(env, "=")[1] == 10.0
    _, info = env.reset(seed=0, options={"ranks": [12, 13, 1, 1]})
    assert act(env, "10")[1] == -1.0  # 10 is not on a card when the K counts 13


# ---------------------------------------------------------------------------------------------------- rule sets
# The cases where RL4VLM's gym_cards and ours differ, replayed from the same deal under both rule sets:
# (env id, ranks, actions, (reward, terminated, truncated) of the last step under "exact", under "rl4vlm").
DIFFERING_CASES = {
    "adjacent numbers (Points24)": (
        "gym_cards/Points24-v0", [2, 4, 1, 1], ["2", "4", "*", "1", "*", "1", "="], (-1.0, True, False), (10.0, True, False)
    ),
    "adjacent numbers (EZPoints)": ("gym_cards/EZPoints-v0", [1, 2], ["1", "2", "="], (-1.0, True, False), (10.0, True, False)),
    "floor division": (
        "gym_cards/Points24-v0", [7, 3, 2, 1], ["7", "3", "/", "/", "(", "2", "+", "1", ")", "="],
        (-1.0, True, False), (10.0, True, False),
    ),
    "power": ("gym_cards/Points24-v0", [2, 3, 3, 1], ["2", "*", "*", "3", "*", "3", "*", "1", "="], (-1.0, True, False),
              (10.0, True, False)),
    "float rounding": (
        "gym_cards/Points24-v0", [3, 3, 8, 8], ["8", "/", "(", "3", "-", "8", "/", "3", ")", "="],
        (10.0, True, False), (-1.0, True, False),
    ),
    "tower": ("gym_cards/Points24-v0", [9, 9, 9, 1], ["9", "*", "*", "9", "*", "*", "9", "*", "1", "="],
              (-1.0, True, False), (-1.0, True, False)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DIFFERING_CASES))
@pytest.mark.parametrize("rules", ["exact", "rl4vlm"])
def test_differing_cases_under_both_rule_sets(case, rules):
    env_id, ranks, actions, exact, rl4vlm = DIFFERING_CASES[case]
    env = make(env_id, rules=rules)
    env.reset(seed=0, options={"ranks": ranks})
    start = time.perf_counter()
    results = play(env, actions)
    assert time.perf_counter() - start < 2.0  # "9**9**9*1" hung RL4VLM's env
    assert all(r[1:4] == (0.0, False, False) for r in results[:-1])
    *_, info = results[-1]
    assert results[-1][1:4] == (exact if rules == "exact" else rl4vlm)
    assert info["is_success"] == (results[-1][1] == 10.0) and info["rules"] == rules
    assert info["Formula"] == actions[:-1]  # the formula is the same tokens under both rule sets


@pytest.mark.parametrize(
    "env_id, cap, tokens", [("gym_cards/EZPoints-v0", 5, ["+", "*"]), ("gym_cards/Points24-v0", 20, ["(", ")"])]
)
def test_length_cap_under_both_rule_sets(env_id, cap, tokens):
    filler = (tokens * cap)[:cap]
    exact = make(env_id)
    exact.reset(seed=0)
    assert all(r[1:4] == (0.0, False, False) for r in play(exact, filler))
    _, reward, terminated, truncated, info = act(exact, tokens[0])  # past the cap: -1 and truncation at once
    assert (reward, terminated, truncated, len(info["Formula"])) == (-1.0, False, True, cap + 1)

    rl4vlm = make(env_id, rules="rl4vlm")
    rl4vlm.reset(seed=0)
    play(rl4vlm, filler)
    _, reward, terminated, truncated, info = act(rl4vlm, tokens[0])  # RL4VLM checks the cap before the action
    assert (reward, terminated, truncated, len(info["Formula"])) == (0.0, False, False, cap + 1)
    _, reward, terminated, truncated, info = act(rl4vlm, "=")  # the next action, even "=", is ignored
    assert (reward, terminated, truncated, len(info["Formula"]), info["is_success"]) == (
        -1.0,
        False,
        True,
        cap + 1,
        False,
    )
    # The extra token may be an invalid number: its -1 and blank, then the ignored step.
    rl4vlm.reset(seed=0, options={"ranks": [1] * len(rl4vlm._numbers)})
    play(rl4vlm, filler)
    _, reward, _, truncated, info = act(rl4vlm, "7")
    assert (reward, truncated, info["invalid_number"], info["Formula"][-1]) == (-1.0, False, True, BLANK)
    assert act(rl4vlm, "1")[1:4] == (-1.0, False, True)


def test_rules_change_the_prompts_formula_and_the_solvable_flag():
    exact, rl4vlm = make("gym_cards/Points24-v0"), make("gym_cards/Points24-v0", rules="rl4vlm")
    for env in (exact, rl4vlm):
        env.reset(seed=0, options={"ranks": [2, 4, 1, 1]})
        *_, info = play(env, ["2", "4", "*", "1", "10"])[-1]
    assert exact.rules == "exact" and info["rules"] == "rl4vlm"
    # The prompt shows info["formula_text"]: spaces under "exact" (two numbers); RL4VLM's "".join under "rl4vlm".
    assert exact._get_info()["formula_text"] == "2 4 * 1  " and info["formula_text"] == "24*1 "
    from vlm_env_ppo.tasks import POINTS_24

    assert "The current formula is: 24*1" in POINTS_24.prompt(info)
    np.testing.assert_array_equal(exact.render(), rl4vlm.render())  # the frame is the same: RL4VLM drew spaces too
    # [2, 4, 1, 1] has no exact solution, but 24 * 1 * 1 wins under RL4VLM's rules.
    assert exact.reset(options={"ranks": [2, 4, 1, 1]})[1]["solvable"] is False
    assert rl4vlm.reset(options={"ranks": [2, 4, 1, 1]})[1]["solvable"] is True


@pytest.mark.parametrize("env_id", ["gym_cards/EZPoints-v0", "gym_cards/Points24-v0"])
def test_unknown_rules_are_refused(env_id):
    for bad in ("foo", "RL4VLM", None):
        with pytest.raises(ValueError, match="`rules` must be one of 'exact', 'rl4vlm'"):
            gym.make(env_id, rules=bad)


def test_rules_round_trip_through_a_saved_agents_env_kwargs():
    """The trainer saves `env_kwargs` in the agent's JSON; the loaded agent's env factory passes them back."""
    import json
    from types import SimpleNamespace

    from vlm_env_ppo.agent import VLMAgent

    saved = json.loads(json.dumps({"env_id": "gym_cards/Points24-v0", "env_kwargs": {"rules": "rl4vlm"}}))
    agent = SimpleNamespace(config=saved, task=None)
    env = VLMAgent.env_factory(agent)()
    assert env.unwrapped.rules == "rl4vlm"
    assert VLMAgent.env_factory(agent, rules="exact")().unwrapped.rules == "exact"  # an explicit override wins


# ---------------------------------------------------------------------------------------------------- Blackjack
def test_blackjack_matches_gymnasium_blackjack_v1():
    ref = gym.make("Blackjack-v1", natural=False, sab=False)
    ours = gym.make("gym_cards/Blackjack-v0")
    rewards = []
    for seed in range(600):
        actions = np.random.default_rng(10_000 + seed)
        (player, dealer, ace), _ = ref.reset(seed=seed)
        _, info = ours.reset(seed=seed)
        assert (info["player_sum"], info["dealer_value"], int(info["usable_ace"])) == (player, dealer, ace)
        terminated = False
        while not terminated:
            action = int(actions.integers(2))
            (player, dealer, ace), reward, terminated, truncated, _ = ref.step(action)
            _, our_reward, our_terminated, our_truncated, info = ours.step(action)
            assert (our_reward, our_terminated, our_truncated) == (reward, terminated, truncated), seed
            assert (info["player_sum"], info["dealer_value"], int(info["usable_ace"])) == (player, dealer, ace)
        rewards.append(reward)
    assert set(rewards) == {-1.0, 0.0, 1.0}


def test_blackjack_info_describes_the_cards():
    env = make("gym_cards/Blackjack-v0")
    values = {"A": 1, "J": 10, "Q": 10, "K": 10}
    for seed in range(100):
        _, info = env.reset(seed=seed)
        assert len(info["player_cards"]) == 2 and "dealer_cards" not in info
        player = [values.get(label, None) or int(label) for label in info["player_cards"]]
        assert sum(player) + (10 if 1 in player and sum(player) <= 11 else 0) == info["player_sum"]
        assert (values.get(info["dealer_card"]) or int(info["dealer_card"])) == info["dealer_value"]
        terminated = False
        while not terminated:
            _, reward, terminated, truncated, info = env.step(int(info["player_sum"] < 15))
            assert not truncated
        assert info["dealer_cards"][0] == info["dealer_card"] and len(info["dealer_cards"]) >= 2
        assert info["is_success"] == (reward > 0)


def test_blackjack_natural_and_sab_follow_gymnasium():
    # Blackjack-v1 is registered with sab=True: pass both flags explicitly.
    for kwargs in ({"natural": True, "sab": False}, {"natural": False, "sab": True}):
        ref = gym.make("Blackjack-v1", **kwargs)
        ours = gym.make("gym_cards/Blackjack-v0", **kwargs)
        for seed in range(300):
            ref.reset(seed=seed)
            ours.reset(seed=seed)
            assert ref.step(0)[1] == ours.step(0)[1]
