"""The critic-free estimators (GRPO, RLOO, GiGPO) against hand computations on small made-up rollouts, as the GAE
test does: unequal episode lengths, waiting envs, rounds the rollout cuts off, singleton step groups, equal returns."""

import math

import pytest
import torch

from vlm_env_ppo.advantages import (
    discounted_returns,
    group_normalize,
    group_relative_advantages,
    leave_one_out_advantages,
)

F, T = False, True


def std(xs):  # unbiased, as the estimators use
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_group_normalize_and_leave_one_out_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, 7.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    out = group_normalize(scores, groups, std_floor=0.0)
    s = std([1.0, 0.0, 0.5])
    torch.testing.assert_close(out, torch.tensor([0.5 / s, -0.5 / s, 0.0, 0.0, 0.0, 0.0]))  # equal: 0; lone: 0
    # the floor bounds the scale; mean-only normalisation skips it
    floored = group_normalize(torch.tensor([0.0, 0.01]), torch.tensor([0, 0]), std_floor=0.1)
    torch.testing.assert_close(floored, torch.tensor([-0.05, 0.05]))
    torch.testing.assert_close(group_normalize(scores, groups, scale_by_std=False)[:3], torch.tensor([0.5, -0.5, 0.0]))
    loo = leave_one_out_advantages(scores, groups)
    torch.testing.assert_close(loo, torch.tensor([1 - 0.25, 0 - 0.75, 0.5 - 0.5, 0.0, 0.0, 0.0]))


def test_discounted_returns_restart_at_episode_ends():
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    done = torch.tensor([[F], [T], [F], [F]])
    out = discounted_returns(rewards, done, 0.5)
    torch.testing.assert_close(out, torch.tensor([[1 + 0.5 * 2], [2.0], [3 + 0.5 * 4], [4.0]]))


# One group of 3 envs, 5 steps. Round 0: env 0 ends after 1 step, env 1 after 3, env 2 after 2 (truncated: a time
# limit ends the episode too); the waiting envs' steps have round -1. Round 1 starts at t=3; env 1 is still playing
# when the rollout ends, so round 1 is cut off and contributes nothing (though envs 0 and 2 finished it).
REWARDS = torch.tensor([[1.0, 0.0, 0.0], [5.0, 0.0, 0.5], [5.0, 2.0, 5.0], [0.0, 1.0, 1.0], [9.0, 0.0, 0.0]])
DONE = torch.tensor([[T, F, F], [F, F, T], [F, T, F], [T, F, T], [F, F, F]])
ROUNDS = torch.tensor([[0, 0, 0], [-1, 0, 0], [-1, 0, -1], [1, 1, 1], [-1, 1, -1]])
RETURNS = [1.0, 2.0, 0.5]  # round 0: env 0, env 1, env 2


def test_grpo_and_rloo_give_each_episode_its_group_relative_return():
    adv, included, stats = group_relative_advantages("grpo", REWARDS, DONE, ROUNDS, std_floor=0.0)
    m, s = sum(RETURNS) / 3, std(RETURNS)
    a = [(r - m) / s for r in RETURNS]
    expected = torch.tensor([[a[0], a[1], a[2]], [0, a[1], a[2]], [0, a[1], 0], [0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(adv, expected)
    assert included.tolist() == [[T, T, T], [F, T, T], [F, T, F], [F, F, F], [F, F, F]]
    assert stats["grouped_fraction"] == pytest.approx(6 / 15)

    adv, included, _ = group_relative_advantages("rloo", REWARDS, DONE, ROUNDS)
    loo = [1.0 - (2.0 + 0.5) / 2, 2.0 - (1.0 + 0.5) / 2, 0.5 - (1.0 + 2.0) / 2]
    torch.testing.assert_close(adv[0], torch.tensor(loo))
    torch.testing.assert_close(adv[2], torch.tensor([0.0, loo[1], 0.0]))


def test_gigpo_adds_step_groups_of_identical_states_by_hand():
    # States: all three start in "s0" (same seed); at t=1 env 1 and env 2 both reach "a", at t=2 env 1 sees "b".
    # The cut-off round 1 also passes through "s0", but step groups never span rounds.
    keys = ["s0", "s0", "s0", "x", "a", "a", "x", "b", "x", "s0", "s0", "s0", "x", "c", "x"]
    gamma, omega = 0.5, 0.7
    adv, included, stats = group_relative_advantages(
        "gigpo", REWARDS, DONE, ROUNDS, keys, std_floor=0.0, step_gamma=gamma, step_weight=omega
    )
    m, s = sum(RETURNS) / 3, std(RETURNS)
    episode = [(r - m) / s for r in RETURNS]
    # discounted step returns: env 0 at t=0: 1; env 1: t=0 0 + .5*(0 + .5*2) = .5, t=1 1, t=2 2; env 2: t=0 0 + .5*.5
    # = .25, t=1 .5
    g0 = [1.0, 0.5, 0.25]
    s0 = [(g - sum(g0) / 3) / std(g0) for g in g0]
    ga = [1.0, 0.5]
    sa = [(g - sum(ga) / 2) / std(ga) for g in ga]
    expected = torch.zeros(5, 3)
    expected[0] = torch.tensor([episode[k] + omega * s0[k] for k in range(3)])
    expected[1, 1], expected[1, 2] = episode[1] + omega * sa[0], episode[2] + omega * sa[1]
    expected[2, 1] = episode[1]  # "b" is a step group of one: no step-level term
    torch.testing.assert_close(adv, expected)
    assert stats["step_group_fraction"] == pytest.approx(5 / 6)


def test_all_equal_returns_give_zero_advantages():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    done = torch.tensor([[F, F], [T, T]])
    rounds = torch.zeros(2, 2, dtype=torch.long)
    for estimator in ("grpo", "rloo", "gigpo"):
        keys = ["a", "a", "b", "b"]
        adv, included, _ = group_relative_advantages(estimator, rewards, done, rounds, keys, std_floor=0.1)
        assert included.all() and torch.equal(adv, torch.zeros(2, 2)), estimator


def test_no_complete_round_and_bad_arguments():
    adv, included, stats = group_relative_advantages(
        "grpo", torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.long)
    )
    assert not included.any() and stats["grouped_fraction"] == 0.0 and torch.equal(adv, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="Unknown group estimator"):
        group_relative_advantages("gae", REWARDS, DONE, ROUNDS)
    with pytest.raises(ValueError, match="state key"):
        group_relative_advantages("gigpo", REWARDS, DONE, ROUNDS)
