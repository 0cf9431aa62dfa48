"""GAE, whitening and KL estimators against hand computations (SB3 tests/test_gae.py style)."""

import math

import pytest
import torch

from vlm_env_ppo.advantages import compute_gae, kl_penalty, normalize_advantages, spread_back_in_episodes, whiten

GAMMA, LAM = 0.9, 0.95


def test_gae_mid_batch_termination_and_truncation_by_hand():
    # env 0 terminates at t=1; env 1 is truncated (time limit) at t=0 and bootstraps from its final observation.
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 0.1], [0.4, 0.2], [0.3, 0.3]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    truncated = torch.tensor([[False, True], [False, False], [False, False]])
    final_values = torch.tensor([[0.0, 0.7], [99.0, 0.0], [0.0, 0.0]])  # 99 must be ignored: terminated
    next_value = torch.tensor([0.2, 0.6])

    adv, ret = compute_gae(rewards, values, terminated, truncated, final_values, next_value, GAMMA, LAM)

    # env 0
    a2 = 2 + GAMMA * 0.2 - 0.3
    a1 = 0 - 0.4  # terminated: no bootstrap, no continuation
    a0 = (1 + GAMMA * 0.4 - 0.5) + GAMMA * LAM * a1
    # env 1
    b2 = 0 + GAMMA * 0.6 - 0.3
    b1 = (1 + GAMMA * 0.3 - 0.2) + GAMMA * LAM * b2
    b0 = 0 + GAMMA * 0.7 - 0.1  # truncated: bootstrap from V(final obs), and the next episode does not leak in
    expected = torch.tensor([[a0, b0], [a1, b1], [a2, b2]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_terminated_and_truncated_at_once_is_a_termination():
    z = torch.zeros(1, 1)
    adv, _ = compute_gae(
        torch.ones(1, 1), z, torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool),
        torch.full((1, 1), 5.0), torch.full((1,), 3.0), GAMMA, LAM,
    )
    assert adv.item() == pytest.approx(1.0)


def test_gae_lambda_one_is_discounted_return_minus_value():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.3], [0.2], [0.1]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = compute_gae(rewards, values, no, no, torch.zeros(3, 1), torch.tensor([4.0]), 0.5, 1.0)
    expected_returns = torch.tensor([[1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4], [2 + 0.5 * 3 + 0.25 * 4], [3 + 0.5 * 4]])
    torch.testing.assert_close(ret, expected_returns)
    torch.testing.assert_close(adv, expected_returns - values)


def test_whiten_and_masked_whiten():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    w = whiten(x)
    assert w.mean().abs() < 1e-6 and (w.var(unbiased=False) - 1).abs() < 1e-4
    m = whiten(x, mask=torch.tensor([1, 1, 1, 0]))
    torch.testing.assert_close(m[:3], whiten(x[:3]))


def test_normalize_advantages_scales_down_never_up():
    """Spread larger than the floor: classic whitening. Critic noise around one return (a converged policy): only
    centred, not blown up to unit scale, which is what made long runs collapse. Floor 0 is classic whitening."""
    big = torch.tensor([-10.0, 0.0, 10.0, 20.0])
    out, stats = normalize_advantages(big, std_floor=1.0)
    torch.testing.assert_close(out, whiten(big))
    assert stats["scale"] == pytest.approx(float(big.std(unbiased=False)))
    noise = torch.tensor([0.01, -0.02, 0.015, -0.005])
    out, stats = normalize_advantages(noise, std_floor=1.0)
    torch.testing.assert_close(out, noise - noise.mean())
    assert stats["scale"] == 1.0 and stats["std"] == pytest.approx(float(noise.std(unbiased=False)))
    classic, _ = normalize_advantages(noise, std_floor=0.0)
    assert float(classic.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # statistics from another tensor (all processes' advantages); non-finite entries are ignored and kept
    with_nan = torch.tensor([1.0, float("nan"), 3.0])
    out, stats = normalize_advantages(with_nan, std_floor=0.5, statistics_of=torch.tensor([1.0, 3.0, float("inf")]))
    assert stats["mean"] == 2.0 and stats["scale"] == 1.0
    assert out[1].isnan() and out[0].item() == -1.0 and out[2].item() == 1.0


def test_spread_back_in_episodes_stops_at_episode_ends():
    bad = torch.tensor([[0, 0], [0, 0], [1, 0], [0, 1]], dtype=torch.bool)  # (num_steps=4, num_envs=2)
    done = torch.tensor([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=torch.bool)
    expected = torch.tensor([[0, 0], [1, 0], [1, 0], [0, 1]], dtype=torch.bool)  # env 1's step 3 follows an end
    assert torch.equal(spread_back_in_episodes(bad, done), expected)
    no_ends = torch.tensor([[1, 1], [1, 1], [1, 1], [0, 1]], dtype=torch.bool)
    assert torch.equal(spread_back_in_episodes(bad, torch.zeros_like(done)), no_ends)


def test_kl_estimators():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    r = 0.25 / 0.5
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx((r - 1) - math.log(r))
    assert kl_penalty(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalty(logp, ref, "k9")
