"""Clipped PPO losses against hand computations."""

import math

import pytest
import torch

from vlm_env_ppo.losses import explained_variance, importance_weights, policy_loss, value_loss


def test_policy_loss_clips_positive_advantage_ratio():
    loss, stats = policy_loss(
        torch.tensor([0.0, math.log(1.5)]), torch.zeros(2), torch.tensor([1.0, 1.0]), cliprange=0.2
    )
    # ratio = [1, 1.5]; objective = min(r*A, clip(r)*A) = [1, 1.2]; loss = -mean = -1.1
    assert loss.item() == pytest.approx(-1.1)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio"].item() == pytest.approx(1.25)


def test_policy_loss_negative_advantage_takes_pessimistic_bound():
    loss, _ = policy_loss(torch.tensor([math.log(0.5)]), torch.zeros(1), torch.tensor([-1.0]), cliprange=0.2)
    assert loss.item() == pytest.approx(0.8)  # max(0.5, 0.8) for A = -1


def test_policy_loss_gradient_sign_increases_logprob_of_good_actions():
    logp = torch.zeros(2, requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(2), torch.tensor([1.0, -1.0]), cliprange=0.2)
    loss.backward()
    assert logp.grad[0] < 0 < logp.grad[1]  # descent raises logp of the positive-advantage action


def test_policy_loss_approx_kl_zero_on_policy():
    _, stats = policy_loss(torch.tensor([0.3, -0.2]), torch.tensor([0.3, -0.2]), torch.ones(2), 0.1)
    assert stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0


def test_value_loss_clipped_by_hand():
    loss, stats = value_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0]), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * max((1 - 2) ** 2, (0.2 - 2) ** 2))
    assert stats["clipfrac"].item() == 1.0
    plain, _ = value_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0]), cliprange_value=None)
    assert plain.item() == pytest.approx(0.5)


def test_explained_variance():
    r = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(r, r) == pytest.approx(1.0)
    assert explained_variance(torch.full((3,), 2.0), r) == pytest.approx(0.0)
    assert math.isnan(explained_variance(r, torch.ones(3)))


# ------------------------------------------------------------------ truncated importance sampling (rollout_backend="vllm")
def test_importance_weights_by_hand():
    # exp(old - sampler): [exp(0), exp(log 2), exp(log 5) capped at 3, exp(-log 4)]; a NaN sampler log-prob: weight 1
    old = torch.tensor([0.0, math.log(2.0), math.log(5.0), 0.0, 0.0])
    sampler = torch.tensor([0.0, 0.0, 0.0, math.log(4.0), float("nan")])
    weights = importance_weights(old, sampler, cap=3.0)
    torch.testing.assert_close(weights, torch.tensor([1.0, 2.0, 3.0, 0.25, 1.0]))


def test_policy_loss_sample_weights_scale_each_term_without_gradient():
    # ratio 1 everywhere: each term is -A; weights [2, 0.5] give -(2 * 1 + 0.5 * 3) / 2 = -1.75
    logp = torch.zeros(2, requires_grad=True)
    weights = torch.tensor([2.0, 0.5], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(2), torch.tensor([1.0, 3.0]), cliprange=0.2, sample_weights=weights)
    assert loss.item() == pytest.approx(-1.75)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.0, -0.75]))  # d/dlogp of -w A r / 2 at r = 1
    assert weights.grad is None, "the weights are constants of the loss"
    unweighted, _ = policy_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 3.0]), cliprange=0.2)
    assert unweighted.item() == pytest.approx(-2.0)  # no weights: the plain mean, as before
