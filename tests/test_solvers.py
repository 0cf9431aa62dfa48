"""Reference policies: exact solver, experts that always win what can be won, and Blackjack basic strategy."""

import itertools
from collections import Counter
from fractions import Fraction

import gymnasium as gym
import numpy as np
import pytest

import vlm_env_ppo.envs  # noqa: F401  (registers the ids)
from vlm_env_ppo.envs.formula import evaluate, formula_equals
from vlm_env_ppo.envs.solvers import (
    blackjack_basic_strategy,
    number_line_oracle,
    points_expert_action,
    solve_points,
)


def uses_each_number_once(tokens, numbers):
    return Counter(t for t in tokens if t.isdigit()) == Counter(str(n) for n in numbers)


@pytest.mark.parametrize(
    "numbers, target",
    [([3, 3, 8, 8], 24), ([1, 5, 5, 5], 24), ([4, 4, 10, 10], 24), ([1, 2, 3, 4], 24), ([10, 2], 12), ([6, 2], 12)],
)
def test_solve_points_finds_exact_solutions(numbers, target):
    tokens = solve_points(numbers, target)
    assert tokens is not None
    assert evaluate(tokens) == target
    assert uses_each_number_once(tokens, numbers)


def test_solve_points_rational_example_and_unsolvable_deals():
    assert solve_points([3, 3, 8, 8]) == ["8", "/", "(", "3", "-", "8", "/", "3", ")"]
    for numbers in ([1, 1, 1, 1], [10, 10, 10, 10], [1, 1, 1, 2], [1, 1, 2, 2]):
        assert solve_points(numbers, 24) is None
    assert solve_points([10, 2], 12, operators=("+", "*")) in (["2", "+", "10"], ["10", "+", "2"])
    assert solve_points([6, 2], 12, operators=("+",)) is None
    assert solve_points([6, 2], 12, operators=("*",)) is not None


def brute_force_solvable(numbers, target):
    """Independent check: every permutation, operator triple and the five bracketings of four numbers."""
    ops = "+-*/"

    def apply(a, op, b):
        if a is None or b is None:
            return None
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        return None if b == 0 else a / b

    for a, b, c, d in set(itertools.permutations(Fraction(n) for n in numbers)):
        for x, y, z in itertools.product(ops, repeat=3):
            shapes = [
                apply(apply(apply(a, x, b), y, c), z, d),
                apply(apply(a, x, apply(b, y, c)), z, d),
                apply(a, x, apply(apply(b, y, c), z, d)),
                apply(a, x, apply(b, y, apply(c, z, d))),
                apply(apply(a, x, b), y, apply(c, z, d)),
            ]
            if target in shapes:
                return True
    return False


def test_solver_agrees_with_brute_force_on_random_deals():
    rng = np.random.default_rng(0)
    for _ in range(60):
        numbers = [int(n) for n in np.minimum(rng.integers(1, 14, size=4), 10)]
        assert (solve_points(numbers, 24) is not None) == brute_force_solvable(numbers, 24), numbers


# ---------------------------------------------------------------------------------------------------- oracles in the envs
def run_episode(env, seed, policy):
    _, info = env.reset(seed=seed)
    start_info = info
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(policy(info))
        total += reward
    return start_info, info, reward, total, terminated


def test_number_line_oracle_always_wins():
    for max_position in (5, 9):
        env = gym.make("gym_cards/NumberLine-v0", max_position=max_position)
        for seed in range(300):
            _, _, last_reward, total, terminated = run_episode(env, seed, number_line_oracle)
            assert terminated and last_reward == 1.0 and total == 1.0  # no −1 on the way


@pytest.mark.parametrize("rules", ["exact", "rl4vlm"])
@pytest.mark.parametrize("env_id, target", [("gym_cards/EZPoints-v0", 12), ("gym_cards/Points24-v0", 24)])
def test_points_expert_wins_every_solvable_deal(env_id, target, rules):
    env = gym.make(env_id, rules=rules)
    names = env.unwrapped.action_names
    solvable = wins = 0
    deals = 1000
    for seed in range(deals):
        start, end, last_reward, total, terminated = run_episode(
            env,
            seed,
            lambda info: points_expert_action(info, target, names),  # the rules come from info["rules"]
        )
        assert terminated
        if start["solvable"]:
            solvable += 1
            wins += last_reward == 10.0
            assert total == 10.0 and end["is_success"], (seed, start["Numbers"], end["Formula"])
            assert len(end["Formula"]) <= env.unwrapped.max_formula_length  # solutions fit the cap
        else:
            assert last_reward == -1.0 and len(end["Formula"]) == 0  # it presses "=" at once
    print(
        f"\n{env_id} rules={rules}: solvable {solvable / deals:.3f} of {deals} seeded deals; expert wins {wins}/{solvable}"
    )
    assert wins == solvable
    if env_id == "gym_cards/EZPoints-v0":
        assert solvable == deals
    elif rules == "exact":
        assert solvable == 731  # 73.1%: +10 needs exact arithmetic on + - * / ( ) only
    else:
        assert solvable == 854  # 85.4%: adds numbers side by side, ** and //, and loses float-rounding wins


def test_points24_solvable_fraction_over_every_deal():
    """The exact probability that a Points24 deal can be won (ranks uniform and independent, J/Q/K = 10), per rule set:
    every one of the 13**4 rank tuples, solved per multiset of numbers (715 of them)."""
    counts = Counter(tuple(sorted(min(r, 10) for r in ranks)) for ranks in itertools.product(range(1, 14), repeat=4))
    total = sum(counts.values())
    fractions = {}
    for rules in ("exact", "rl4vlm"):
        wins = sum(n for numbers, n in counts.items() if solve_points(numbers, 24, rules=rules) is not None)
        fractions[rules] = wins / total
    print(f"\nPoints24 deals that can be won, over all 13**4 rank tuples: {fractions}")
    assert round(fractions["exact"], 3) == 0.731 and round(fractions["rl4vlm"], 3) == 0.863  # RL4VLM's own code: 86.3%


@pytest.mark.parametrize(
    "numbers, target, operators, parentheses",
    [([3, 3, 8, 8], 24, "+-*/", True), ([2, 4, 1, 1], 24, "+-*/", True), ([7, 3, 2, 1], 24, "+-*/", True),
     ([1, 2], 12, "+*", False), ([13, 1, 1, 1], 24, "+-*/", True), ([10, 2], 12, "+*", False)],
)  # fmt: skip
def test_rl4vlm_solutions_win_under_rl4vlm_rules(numbers, target, operators, parentheses):
    tokens = solve_points(numbers, target, tuple(operators), parentheses, rules="rl4vlm")
    assert tokens is not None and formula_equals(tokens, target, "rl4vlm")
    assert Counter(t for t in tokens if t.isdigit()) == Counter(str(n) for n in numbers)  # each card typed once
    assert parentheses or "(" not in tokens
    exact = solve_points(numbers, target, tuple(operators), parentheses)
    if exact is not None and formula_equals(exact, target, "rl4vlm"):
        assert tokens == exact  # the expert keeps playing the exact solution where it also wins under RL4VLM's rules


def test_rl4vlm_replaces_exact_solutions_that_floats_break():
    exact = solve_points([3, 3, 8, 8], 24)
    assert evaluate(exact) == 24 and not formula_equals(exact, 24, "rl4vlm")  # 8/(3-8/3) is 23.99999999999999
    tokens = solve_points([3, 3, 8, 8], 24, rules="rl4vlm")
    assert tokens != exact and formula_equals(tokens, 24, "rl4vlm")
    # Every exact solution the solver plays is checked under the floats: on all 715 deals, none that loses is kept.
    for numbers in itertools.combinations_with_replacement(range(1, 11), 4):
        tokens = solve_points(numbers, 24, rules="rl4vlm")
        if solve_points(numbers, 24) is not None:
            assert tokens is not None and formula_equals(tokens, 24, "rl4vlm"), numbers


def test_points_expert_defaults_and_recovery():
    info = {"Numbers": [10, 2], "Formula": [], "target": 12}
    assert points_expert_action(info) in (1, 9)  # "2" or "10" with EZPoints' action names
    info = {"Numbers": [8, 3, 8, 3], "Formula": ["8", "/", " ", "("], "target": 24}  # a blank is skipped
    assert points_expert_action(info) == 2  # "3"
    info = {"Numbers": [8, 3, 8, 3], "Formula": ["3", "+"], "target": 24}  # off the expert's solution
    assert points_expert_action(info) == 16  # "=": no undo, end the episode
    info = {"Numbers": [1, 1, 1, 1], "Formula": [], "target": 24}
    assert points_expert_action(info) == 16
    # Under RL4VLM's rules a blank between two digits breaks "24": the expert gives up instead of typing on.
    info = {"Numbers": [2, 4, 1, 1], "Formula": ["1", "+", "2", " "], "target": 24, "rules": "rl4vlm"}
    assert solve_points([2, 4, 1, 1], 24, rules="rl4vlm")[:3] == ["1", "+", "2"]
    assert points_expert_action(info) == 16
    info["Formula"] = ["1", "+", "2"]
    assert points_expert_action(info) == 3  # "4"
    assert points_expert_action(info, rules="exact") == 16  # no exact solution for [2, 4, 1, 1]


def test_blackjack_basic_strategy_table():
    def action(total, dealer, soft=False):
        return blackjack_basic_strategy({"player_sum": total, "dealer_value": dealer, "usable_ace": soft})

    assert all(action(t, d) == 1 for t in range(4, 12) for d in range(1, 11))
    assert [action(12, d) for d in range(1, 11)] == [1, 1, 1, 0, 0, 0, 1, 1, 1, 1]
    assert [action(16, d) for d in range(1, 11)] == [1, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert all(action(t, d) == 0 for t in range(17, 22) for d in range(1, 11))
    assert all(action(17, d, soft=True) == 1 for d in range(1, 11))
    assert [action(18, d, soft=True) for d in range(1, 11)] == [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert all(action(19, d, soft=True) == 0 for d in range(1, 11))


def test_blackjack_basic_strategy_win_rate():
    env = gym.make("gym_cards/Blackjack-v0")
    rewards = np.array([run_episode(env, seed, blackjack_basic_strategy)[2] for seed in range(3000)])
    win, draw, loss = (rewards > 0).mean(), (rewards == 0).mean(), (rewards < 0).mean()
    print(f"\nBlackjack basic strategy over 3000 hands: win {win:.3f}, draw {draw:.3f}, loss {loss:.3f}")
    assert 0.38 <= win <= 0.48 and 0.05 <= draw <= 0.13
    always_stand = np.array([run_episode(env, seed, lambda info: 0)[2] for seed in range(1500)])
    assert rewards.mean() > always_stand.mean() + 0.05  # the strategy is worth something
