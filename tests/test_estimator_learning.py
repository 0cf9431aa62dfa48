"""The critic-free estimators learn a multi-step task, and a control run without what the task needs does not.

Memory-v0 (`vlm_env_ppo.envs.multistep_probes.MemoryEnv`): the cue is on the first frame only and the decisive answer
comes one step later, paid only then. GRPO and GiGPO (no value head) must take a tiny LLaVA-NeXT from chance to 90%
with constrained decoding and no warm start; the control drops the history (`history_length=0`), so the decisive
step cannot see the cue and success must stay near chance 0.5 (a learner that "succeeds" there would be learning from
something other than the cue, e.g. advantages leaking between envs or episodes). ``pytest -s`` prints the numbers;
``benchmarks/learning.py --estimators`` runs every estimator on every probe."""

import pytest

from vlm_env_ppo.probes import convergence, probe_trainer, training_success

MEMORY = "vlm_env_ppo/Memory-v0"
UPDATES = 12


def memory_run(model, tmp_path, estimator, control):
    overrides = dict(
        constrained_decoding=True, warm_start_steps=0, num_updates=UPDATES, logging_steps=1,
        advantage_estimator=estimator, group_size=4,
    )
    trainer = probe_trainer(model, MEMORY, str(tmp_path / f"{estimator}-{control}"), control=control, **overrides)
    try:
        assert trainer.value_head is None
        trainer.train()
        after = trainer.evaluate(num_episodes=32, seed=1000, greedy=False)
    finally:
        trainer.envs.close()
    success, invalid = training_success(trainer)
    return after, convergence(success), invalid


@pytest.mark.parametrize("estimator", ["grpo", "gigpo"])
def test_critic_free_estimator_learns_memory_and_control_does_not(tiny_vlm_path, tmp_path, estimator):
    model = tiny_vlm_path("llava_next", seed=0)
    after, learner, invalid = memory_run(model, tmp_path, estimator, control=False)
    control_after, control, _ = memory_run(model, tmp_path, estimator, control=True)
    print(
        f"\nMemory, {estimator}: 90% at update {learner['updates_to_90']}, sampled success after "
        f"{after['eval/success_rate']:.3f}; without history: {control_after['eval/success_rate']:.3f}"
    )
    assert max(invalid) == 0.0  # constrained decoding: every answer legal
    assert learner["updates_to_90"] is not None and learner["updates_to_90"] <= UPDATES
    assert after["eval/success_rate"] >= 0.85
    assert control["updates_to_90"] is None and control_after["eval/success_rate"] <= 0.7


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
