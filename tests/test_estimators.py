"""The advantage-estimator switch end to end: GAE (the default) untouched, the critic-free estimators' group rollouts,
and training, saving and loading without a value head. The math is checked by hand in test_group_advantages.py."""

import os

import numpy as np
import pytest
import torch
from test_trainer import make_args

from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.advantages import compute_gae, normalize_advantages
from vlm_env_ppo.agent import VLMAgent
from vlm_env_ppo.groups import state_key
from vlm_env_ppo.models.value_head import VALUE_HEAD_WEIGHTS
from vlm_env_ppo.rollout import unbatch_infos

TRAP = "vlm_env_ppo/Trap-v0"  # episodes of 1 to 3 steps: groups wait for their slowest member


def group_args(tmp_path, estimator, **overrides):
    kwargs = dict(
        num_envs=4, num_steps=6, total_env_steps=24, num_mini_batches=1, per_device_train_batch_size=8,
        max_new_tokens=10, action_only=True, constrained_decoding=True, advantage_estimator=estimator, group_size=2,
    )
    return make_args(tmp_path, **{**kwargs, **overrides})


def test_gae_stays_the_default_and_its_path_is_untouched(tiny_vlm_path, tmp_path):
    """The default is GAE with the value head, and its advantages are exactly `compute_gae` + `normalize_advantages`
    of the rollout, as before the switch existed; the envs are not reset between rollouts (episodes run on), and no
    step is given a group round. (Measured once against the previous release: a 2-update GridNav run gave identical
    logged numbers and bit-identical weights.)"""
    args = make_args(tmp_path, num_steps=3)
    assert args.advantage_estimator == "gae" and args.group_size is None
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=TRAP)
    try:
        assert trainer.value_head is not None and trainer.model.value_head is trainer.value_head
        obs, infos = trainer.envs.reset(seed=0)
        trainer._obs, trainer._infos = obs, unbatch_infos(infos, args.num_envs)
        trainer.envs.reset = lambda **_: pytest.fail("GAE rollouts must not reset the envs")
        batch = trainer.collect_rollout()
        trainer.compute_advantages(batch)
    finally:
        trainer.envs.close()
    assert (batch.rounds == -1).all() and batch.values.abs().sum() > 0
    advantages, returns = compute_gae(
        batch.rewards, batch.values, batch.terminated, batch.truncated, batch.final_values, batch.next_value,
        args.gamma, args.lam,
    )
    expected, _ = normalize_advantages(advantages, args.advantage_std_floor)
    torch.testing.assert_close(batch.advantages, expected)
    torch.testing.assert_close(batch.returns, returns)


@pytest.mark.parametrize("estimator", ["grpo", "gigpo", "rloo"])
def test_group_rollout_starts_each_group_alike_and_skips_the_critic(tiny_vlm_path, tmp_path, estimator):
    """Each group's envs start every round from one state (same seed), rounds restart only when the whole group has
    ended, waiting steps and a round cut off by the rollout's end get advantage 0, and no value is ever computed."""
    args = group_args(tmp_path, estimator)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=TRAP)
    try:
        assert trainer.value_head is None and trainer.model.value_head is None
        trainer.value_of = lambda *a, **k: pytest.fail("a critic-free rollout must not run the critic")
        obs, infos = trainer.envs.reset(seed=0)
        trainer._obs, trainer._infos = obs, unbatch_infos(infos, args.num_envs)
        batch = trainer.collect_rollout()
        trainer.compute_advantages(batch)
    finally:
        trainer.envs.close()
    keys = np.array([state_key(p) for p in batch.prompts]).reshape(args.num_steps, args.num_envs)
    rounds, done = batch.rounds.numpy(), (batch.terminated | batch.truncated).numpy()
    assert (rounds[0] >= 0).all() and rounds[0, 0] == rounds[0, 1] != rounds[0, 2] == rounds[0, 3]
    for r in np.unique(rounds[rounds >= 0]):
        members = np.argwhere(rounds == r)
        envs = sorted({int(e) for _, e in members})
        assert envs in ([0, 1], [2, 3]), "a round is one group's envs"
        first = {e: min(int(t) for t, x in members if x == e) for e in envs}
        assert len(set(first.values())) == 1, "a group's envs start a round together"
        t0 = first[envs[0]]
        assert keys[t0, envs[0]] == keys[t0, envs[1]], "from the same state"
        complete = True
        for e in envs:  # one episode per env per round: its steps up to its first done
            steps = sorted(int(t) for t, x in members if x == e)
            assert steps == list(range(t0, steps[-1] + 1)) and not done[t0:steps[-1], e].any()
            complete &= bool(done[steps[-1], e])
        if not complete:  # cut off by the rollout's end: no return to compare yet
            assert not batch.advantages[torch.as_tensor(rounds == r)].any()
    waiting = rounds < 0
    assert waiting.any() and not complete, "this seed's rollout has waiting envs and ends with a cut-off round"
    assert torch.equal(batch.advantages[torch.as_tensor(waiting)], torch.zeros(int(waiting.sum())))
    assert torch.equal(batch.returns, torch.zeros_like(batch.returns)) and torch.equal(batch.values, batch.returns)
    stats = trainer._advantage_stats
    assert 0 < stats["advantages/grouped_fraction"] <= 1
    assert ("advantages/step_group_fraction" in stats) == (estimator == "gigpo")
    if estimator == "gigpo":  # the first steps of a round share their state: at least those are grouped
        assert stats["advantages/step_group_fraction"] > 0


def test_critic_free_training_saves_no_value_head_and_loads(tiny_vlm_path, tmp_path):
    """GRPO trains the policy (weights change, no value loss), the saved agent has no value head, and it loads back as
    an agent, as a GRPO trainer and as a GAE trainer (which starts a fresh value head)."""
    # 3 updates: one rollout can give every episode of a group the same return, hence zero advantages throughout
    args = group_args(tmp_path, "grpo", logging_steps=1, total_env_steps=72)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=TRAP)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert not any("value_head" in n for n in before)
    try:
        trainer.train()
        out = tmp_path / "agent"
        trainer.save_model(str(out))
    finally:
        trainer.envs.close()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "the policy did not change"
    logged = trainer.state.log_history[-1]
    assert np.isnan(logged["losses/value_loss"]) and np.isfinite(logged["losses/policy_loss"])
    assert "advantages/grouped_fraction" in logged
    files = set(os.listdir(out))
    assert VALUE_HEAD_WEIGHTS not in files and "vlm_env_ppo.json" in files
    assert "PPO with GRPO advantages (critic-free, groups of 2 envs)" in (out / "README.md").read_text()
    agent = VLMAgent.from_pretrained(str(out))
    assert agent.value_head is None and agent.config["advantage_estimator"] == "grpo"
    with pytest.raises(ValueError, match="without a value head"):
        agent.value([np.zeros((64, 64, 3), np.uint8)], [{}])
    for estimator in ("grpo", "gae"):
        again = VLMPPOTrainer(str(out), group_args(tmp_path / estimator, estimator), env=TRAP)
        again.envs.close()
        assert (again.value_head is None) == (estimator == "grpo")


def test_group_config_errors_say_what_to_change(tmp_path):
    kwargs = dict(output_dir=str(tmp_path), num_envs=6, num_steps=2, total_env_steps=12, report_to="none")
    assert VLMPPOConfig(**kwargs, advantage_estimator="grpo").group_size == 6  # one group per process by default
    with pytest.raises(ValueError, match="multiple of `group_size`"):
        VLMPPOConfig(**kwargs, advantage_estimator="gigpo", group_size=4)
    with pytest.raises(ValueError, match="int >= 2"):
        VLMPPOConfig(**kwargs, advantage_estimator="rloo", group_size=1)
    with pytest.raises(ValueError, match="advantage_estimator"):
        VLMPPOConfig(**kwargs, advantage_estimator="ppo")
    with pytest.raises(ValueError, match="gigpo_gamma"):
        VLMPPOConfig(**kwargs, advantage_estimator="gigpo", gigpo_gamma=1.5)
