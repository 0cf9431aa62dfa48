"""End-to-end `VLMPPOTrainer` runs on tiny real VLMs built offline (tier 3), plus its components (tier 2)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from peft import LoraConfig

from vlm_env_ppo import VLMPPOConfig, VLMPPOTrainer
from vlm_env_ppo import trainer as trainer_module
from vlm_env_ppo.actions import ParsedAction
from vlm_env_ppo.envs.probe import ColorChoiceEnv
from vlm_env_ppo.logprobs import token_weights, weighted_logprob
from vlm_env_ppo.models import TINY_FAMILIES
from vlm_env_ppo.models.loading import image_token_ids
from vlm_env_ppo.losses import policy_loss
from vlm_env_ppo.rollout import unbatch_infos
from vlm_env_ppo.tasks import COLOR_CHOICE


def make_args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        num_envs=2,
        num_steps=2,
        total_env_steps=8,
        num_ppo_epochs=1,
        num_mini_batches=2,
        per_device_train_batch_size=1,
        max_new_tokens=8,
        temperature=1.0,
        constrained_decoding=False,  # these tests check the unconstrained path; tests/test_constrained.py the other
        learning_rate=1e-3,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return VLMPPOConfig(**kwargs)


def params_by_name(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def start_rollout(trainer):
    obs, infos = trainer.envs.reset(seed=trainer.env_seed)
    trainer._obs, trainer._infos = obs, unbatch_infos(infos, trainer.args.num_envs)


# ----------------------------------------------------------------------------------------------- log-prob identity
def test_update_logprobs_equal_rollout_logprobs(tiny_vlm_path, tmp_path, monkeypatch):
    """Same params → the update's λ-weighted log-probs and values equal the rollout's, for any micro-batching, and
    the update's own loss path (train mode, entropy, the wrapped model) sees a ratio of exactly 1.

    EZPoints prompts carry the formula typed so far, so prompts differ in length and micro-batches pad differently.
    """
    args = make_args(tmp_path, num_envs=3, num_steps=4, total_env_steps=12, max_new_tokens=12)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/EZPoints-v0")
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    lengths = {p["input_ids"].shape[0] for p in batch.prompts}
    assert len(lengths) > 1, "the check needs prompts of different lengths"
    assert_update_matches_rollout(trainer, batch)
    assert_update_path_has_ratio_one(trainer, batch, monkeypatch)


def test_attention_dropout_in_the_checkpoint_does_not_change_the_update_ratio(tiny_vlm_path, tmp_path, monkeypatch):
    """A checkpoint with attention dropout in its text and vision configs: transformers applies it functionally in
    train mode (not through `nn.Dropout`), so unless the trainer zeroes it the update scores differently from the
    rollout (ratio 1.0073 at step 0 before the fix)."""
    import json
    import shutil

    path = tmp_path / "dropout-model"
    shutil.copytree(tiny_vlm_path("llava_next"), path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["attention_dropout"] = 0.3
    config["vision_config"]["attention_dropout"] = 0.3
    (path / "config.json").write_text(json.dumps(config))
    args = make_args(tmp_path, num_envs=3, num_steps=2, total_env_steps=6, max_new_tokens=12)
    trainer = VLMPPOTrainer(str(path), args, env="gym_cards/EZPoints-v0")
    policy = trainer.model.policy
    assert policy.config.text_config.attention_dropout == 0.0 and policy.config.vision_config.attention_dropout == 0.0
    floats = [(n, k) for n, m in policy.named_modules() for k, v in vars(m).items() if "dropout" in k and v == 0.3]
    assert not floats, f"dropout rates left in modules: {floats[:3]}"
    start_rollout(trainer)
    assert_update_path_has_ratio_one(trainer, trainer.collect_rollout(), monkeypatch)


def assert_logprobs_close(new, old):
    """Rollout and update sum a completion's token log-probs in float32 in different batch layouts, so their rounding
    differs by a few ulps of the sum: the tolerance grows with the sum's magnitude (1e-6 relative, at least 1e-6)
    instead of a fixed 1e-5 that long completions (sums of ~80 nats) exceed."""
    new, old = torch.as_tensor(new).float(), torch.as_tensor(old).float()
    tolerance = 1e-6 * old.abs().clamp(min=1.0)
    gap = (new - old).abs()
    assert (gap <= tolerance).all(), f"log-prob gap {gap.max():.3g} over tolerance {tolerance[gap.argmax()]:.3g}"
    return float(gap.max()) if gap.numel() else 0.0


def assert_update_matches_rollout(trainer, batch):
    """Re-score every sample in shuffled micro-batches: log-probs and values must equal the rollout's. Returns the
    largest log-prob gap."""
    worst = 0.0
    for grouping in (torch.arange(len(batch)).split(5), torch.randperm(len(batch)).split(3)):
        for micro in grouping:
            mb = batch.minibatch(micro, trainer.pad_token_id)
            with torch.no_grad():
                logps, _, values = trainer.model(
                    mb["prompt_inputs"], mb["completion_ids"], mb["completion_mask"], trainer.args.temperature
                )
            new = weighted_logprob(logps, token_weights(mb["completion_mask"], mb["action_token_starts"], 0.5))
            worst = max(worst, assert_logprobs_close(new, mb["old_logprobs"]))
            torch.testing.assert_close(values, mb["old_values"], atol=1e-5, rtol=0)
    return worst


def assert_update_path_has_ratio_one(trainer, batch, monkeypatch):
    """`_micro_batch_loss`, as `ppo_update` calls it (train mode, entropy on), before any step: every sample's new
    λ-weighted log-prob is its rollout one, so ratio 1, approx_kl 0 and nothing clipped."""
    seen = []

    def spy(new_logprobs, old_logprobs, advantages, cliprange, sample_weights=None):
        assert sample_weights is None, "the policy's own `generate` sampled: no importance weights"
        seen.append((new_logprobs.detach().cpu(), old_logprobs.cpu()))
        return policy_loss(new_logprobs, old_logprobs, advantages, cliprange)

    monkeypatch.setattr(trainer_module, "policy_loss", spy)
    model = trainer.model_wrapped
    model.train()
    try:
        for micro in torch.randperm(len(batch)).split(5):
            mb = batch.minibatch(micro, trainer.pad_token_id)
            mb["advantages"] = torch.randn(len(micro))  # so a ratio outside the clip range would count as clipped
            with torch.no_grad():
                _, stats = trainer._micro_batch_loss(model, mb, trainer.accelerator.device)
            # ratio = exp(new - old): a gap within `assert_logprobs_close`'s tolerance moves it by about as much
            scale = max(1.0, float(mb["old_logprobs"].abs().max()))
            assert stats["ratio"] == pytest.approx(1.0, abs=1e-6 * scale) and stats["clipfrac"] == 0.0
            assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-8) and np.isfinite(stats["entropy"])
    finally:
        model.eval()
    assert sum(len(new) for new, _ in seen) == len(batch)
    for new, old in seen:
        assert_logprobs_close(new, old)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_history_prompts_with_different_image_counts_rescore_exactly(tiny_vlm_path, tmp_path, family):
    """With `history_length=2`, prompts hold 1 to 3 images; micro-batches mixing them must give back each sample's
    own images, whatever the processor's layout: LLaVA's and Gemma's per-image rows, Qwen's flattened patches,
    Idefics3's / SmolVLM's per-prompt rows, InternVL's tiles (5 per frame here, all images stacked in one tensor)."""
    args = make_args(tmp_path, num_envs=2, num_steps=4, total_env_steps=8, history_length=2)
    trainer = VLMPPOTrainer(tiny_vlm_path(family), args, env="MiniGrid-Empty-5x5-v0")
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    ids = torch.tensor(image_token_ids(trainer.model.policy.config, trainer.processing_class))
    tokens = [int(torch.isin(p["input_ids"], ids).sum()) for p in batch.prompts]
    per_image = min(tokens)
    assert {t // per_image for t in tokens} == {1, 2, 3} and all(t % per_image == 0 for t in tokens)
    if family == "internvl":  # tiling on: several rows of `pixel_values` per image
        assert {p["pixel_values"].shape[0] for p in batch.prompts} == {5, 10, 15}
    gap = assert_update_matches_rollout(trainer, batch)
    print(f"\n{family}: history log-prob gap {gap:.2g}")


# ----------------------------------------------------------------------------------------------- truncation bootstrap
class UnevenEnv(gym.Env):
    """A noisy frame; every step pays ``reward``; the episode ends after ``length`` steps, terminated or
    (``truncate``) truncated by a time limit. ``info["t"]`` is the step count; ``episodes`` keeps every episode's
    ``(observation, info)`` pairs, from its reset to its last step."""

    metadata = {"render_modes": []}

    def __init__(self, length: int, truncate: bool, reward: float = 1.0):
        self.length, self.truncate, self.reward = length, truncate, reward
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, 255, (32, 32, 3), np.uint8)
        self.episodes = []

    def _observe(self):
        obs, info = self.np_random.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), {"t": self.t}
        self.episodes[-1].append((obs, info))
        return obs, dict(info)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.episodes.append([])
        return self._observe()

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        obs, info = self._observe()
        return obs, self.reward, done and not self.truncate, done and self.truncate, info


class StepCountTrainer(VLMPPOTrainer):
    """Prompts that depend on the observation and on the info; every output is a valid action."""

    def build_messages(self, observation, info):
        text = f"Step {int(info['t'])}. Answer 0 or 1."
        return [{"role": "user", "content": [{"type": "image", "image": observation}, {"type": "text", "text": text}]}]

    def parse_action(self, completion, info):
        return ParsedAction(len(completion) % 2, True, 0)


def test_truncated_episodes_bootstrap_from_their_final_observation(tiny_vlm_path, tmp_path):
    """Env 0 is truncated after 2 steps, env 1 terminated after 3. Same-step autoreset hands over the next episode's
    first observation; the bootstrap value of a truncated step must be the critic's value of the episode's last
    observation (with its last info), and 0 wherever the episode did not end by truncation."""
    specs = iter([(2, True), (3, False)])
    args = make_args(tmp_path, num_envs=2, num_steps=5, total_env_steps=10, num_mini_batches=1, max_new_tokens=4)
    trainer = StepCountTrainer(tiny_vlm_path("llava_next"), args, env=lambda: UnevenEnv(*next(specs)))
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    assert batch.truncated[:, 0].tolist() == [False, True, False, True, False] and not batch.terminated[:, 0].any()
    assert batch.terminated[:, 1].tolist() == [False, False, True, False, False] and not batch.truncated[:, 1].any()

    episodes = trainer.envs.envs[0].unwrapped.episodes  # what env 0 really returned, episode by episode
    assert [len(e) for e in episodes] == [3, 3, 2]  # reset + 2 steps, twice; the third episode is under way
    for t, k in [(1, 0), (3, 1)]:
        final_obs, final_info = episodes[k][-1]
        next_first_obs, next_first_info = episodes[k + 1][0]
        expected = trainer.value_of([final_obs], [final_info])[0]
        torch.testing.assert_close(batch.final_values[t, 0], expected, atol=1e-5, rtol=0)
        # the next episode's first observation (what the vector env returned at that step) has another value
        assert abs(float(trainer.value_of([next_first_obs], [next_first_info])[0] - expected)) > 1e-4
    not_truncated = torch.ones_like(batch.truncated)
    not_truncated[[1, 3], 0] = False
    assert (batch.final_values[not_truncated] == 0).all()
    last_obs, last_info = episodes[2][-1]  # after the last step: the value the rollout continues from
    torch.testing.assert_close(
        batch.next_value[0], trainer.value_of([last_obs], [last_info])[0], atol=1e-5, rtol=0
    )


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl"])
def test_train_lora_changes_adapter_and_value_head_only(tiny_vlm_path, tmp_path, family):
    args = make_args(tmp_path, kl_coef=0.05)
    trainer = VLMPPOTrainer(
        tiny_vlm_path(family),
        args,
        env="gym_cards/NumberLine-v0",
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    model = trainer.model
    before = params_by_name(model)
    # Adapter-disabled reference: before any update, policy == reference, so the KL is exactly zero.
    start_rollout(trainer)
    first = trainer.collect_rollout()
    assert torch.equal(first.kl, torch.zeros_like(first.kl))
    steps_before_train = trainer.env_steps

    trainer.train()
    after = params_by_name(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed, "no parameter changed"
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert any("lora_" in n for n in changed)
    assert any(n.startswith("value_head.") for n in changed)
    assert not any("lora_" not in n and n.startswith("policy.") for n in trainable)

    logs = trainer.state.log_history[-1]
    for key in (
        "env/episode_return", "env/success_rate", "env/episode_length", "env/invalid_action_rate",
        "losses/policy_loss", "losses/value_loss", "losses/approx_kl", "losses/clipfrac", "objective/kl",
        "values/explained_variance", "perf/env_steps_per_sec",
    ):
        assert key in logs, key
    for key in ("losses/policy_loss", "losses/value_loss", "objective/kl", "perf/env_steps_per_sec"):
        assert np.isfinite(logs[key]), key
    # The second rollout came from the updated adapter: a reference that is silently the policy would give exactly 0
    # (the default k1 estimate can be negative on a few samples, hence != rather than >).
    assert logs["objective/kl"] != 0.0
    assert trainer.env_steps - steps_before_train == args.total_env_steps
    assert trainer.state.global_step == args.num_updates == 2


def test_full_finetune_with_4bit_reference(tiny_vlm_path, tmp_path):
    import bitsandbytes as bnb

    # k3: a KL estimate that is > 0 on every sample unless policy and reference agree exactly.
    args = make_args(tmp_path, kl_coef=0.1, ref_model_quantization="4bit", kl_estimator="k3")
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.ref_model.modules())
    policy = trainer.model.policy
    vision = [p for n, p in policy.named_parameters() if "vision_tower" in n]
    assert vision and not any(p.requires_grad for p in vision), "vision tower should be frozen by default"
    before = params_by_name(trainer.model)
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    assert batch.kl.abs().sum() > 0, "a 4-bit copy is not bit-identical to the policy"
    # rewards carry the KL penalty
    torch.testing.assert_close(batch.rewards, batch.env_rewards - 0.1 * batch.kl)
    trainer.train()
    after = params_by_name(trainer.model)
    lm_changed = [n for n in before if "language_model" in n and not torch.equal(before[n], after[n])]
    vision_same = all(torch.equal(before[n], after[n]) for n in before if "vision_tower" in n)
    assert lm_changed and vision_same
    kl = trainer.state.log_history[-1]["objective/kl"]
    assert np.isfinite(kl) and kl > 0, "the reference must not be the (updated) policy itself"


def test_qlora_4bit_policy_with_lora_and_checkpointing(tiny_vlm_path, tmp_path):
    """QLoRA: the policy itself is 4-bit nf4, LoRA adapters train on top, with activation checkpointing; the
    adapter-disabled 4-bit base is the reference."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    args = make_args(
        tmp_path, model_init_kwargs={"quantization_config": quant}, activation_checkpointing=True, kl_coef=0.1,
        num_steps=1, total_env_steps=4, num_mini_batches=1, max_new_tokens=4,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitsandbytes' CPU 4-bit path is ~50x slower with 2 intra-op threads on this machine
    try:
        trainer = VLMPPOTrainer(
            tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0",
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
        )
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.policy.modules())
        before = params_by_name(trainer.model)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    after = params_by_name(trainer.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert any("lora_" in n for n in changed) and all("lora_" in n or "value_head" in n for n in changed)
    kls = [h["objective/kl"] for h in trainer.state.log_history if "objective/kl" in h]
    assert kls[0] == 0.0 and np.isfinite(kls[-1]) and kls[-1] != 0.0  # the update moved the policy off the reference


def test_kl_coef_zero_loads_no_reference(tiny_vlm_path, tmp_path):
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path), env="gym_cards/NumberLine-v0")
    assert trainer.ref_model is None


# ----------------------------------------------------------------------------------------------- learning
def evaluate_success(trainer, episodes: int, seed: int) -> tuple[float, float]:
    """Success and valid-output rates of the current policy on fresh ColorChoice episodes (sampling)."""
    env = ColorChoiceEnv()
    successes = valid = 0
    for k in range(episodes):
        obs, info = env.reset(seed=seed + k)
        out = trainer.act([obs], [info])
        parsed = out.parsed[0]
        valid += parsed.valid
        successes += parsed.valid and env.step(parsed.action)[1] > 0
    return successes / episodes, valid / episodes


def test_learns_a_visual_task_from_chance(tiny_vlm_path, tmp_path):
    """The answer is only in the image. The fresh tiny VLM under constrained decoding (the default: every answer
    legal) is at chance; PPO must take it to >= 90% success in 16 updates (benchmarks/constrained_learning.json: 90%
    at update 8 on seeds 0, 1 and 2). A flipped sign, a wrong mask or a broken advantage makes this fail."""
    args = make_args(
        tmp_path,
        num_envs=8,
        num_steps=4,
        total_env_steps=8 * 4 * 16,
        num_ppo_epochs=2,
        num_mini_batches=2,
        per_device_train_batch_size=8,
        learning_rate=5e-4,
        lr_scheduler_type="constant",
        cliprange=0.2,
        max_new_tokens=10,
        action_only=True,
        constrained_decoding=True,
    )
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env=lambda: ColorChoiceEnv(), task=COLOR_CHOICE)
    before, valid_before = evaluate_success(trainer, 64, seed=1000)
    assert valid_before == 1.0, "constrained decoding: every answer names a colour"
    assert before <= 0.7, f"the fresh policy should be near chance, got {before}"
    trainer.train()
    after, _ = evaluate_success(trainer, 64, seed=1000)
    print(f"\nColorChoice PPO: sampled success {before:.3f} -> {after:.3f}")
    assert after >= 0.9, f"success went from {before:.2f} to only {after:.2f}"


# ----------------------------------------------------------------------------------------------- user hooks
class OddEvenEnv(gym.Env):
    """A test env of our own: the prompt says a number, the agent answers 'odd' or 'even'. No image."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n = int(self.np_random.integers(100))
        return np.full((16, 16, 3), self.n, np.uint8), {"number": self.n}

    def step(self, action):
        reward = float(int(action) == self.n % 2)
        return np.zeros((16, 16, 3), np.uint8), reward, True, False, {}


class OddEvenTrainer(VLMPPOTrainer):
    calls = {"messages": 0, "parse": 0, "raised": 0}

    def build_messages(self, observation, info):
        self.calls["messages"] += 1
        text = f"Is {info['number']} even or odd? Answer with one word."
        return [{"role": "user", "content": [{"type": "image", "image": observation}, {"type": "text", "text": text}]}]

    def parse_action(self, completion, info):
        self.calls["parse"] += 1
        words = completion.lower().split()
        if "even" in words:
            return ParsedAction(0, True, completion.lower().index("even"))
        if "odd" in words:
            return ParsedAction(1, True, completion.lower().index("odd"))
        if self.calls["parse"] % 4 == 0:
            self.calls["raised"] += 1
            raise RuntimeError("user hook bug: the trainer must count this, not crash")
        # A random tiny model never writes "even"/"odd": answer by the parity of the text's length, so valid actions
        # (and their action-token weighting from `action_start`) are exercised too.
        return ParsedAction(len(completion) % 2, True, len(completion) // 2)


def test_user_subclass_with_own_env_trains(tiny_vlm_path, tmp_path):
    from PIL import Image

    class ImageTrainer(OddEvenTrainer):
        def build_messages(self, observation, info):
            messages = super().build_messages(observation, info)
            messages[0]["content"][0]["image"] = Image.fromarray(observation)
            return messages

    args = make_args(tmp_path)
    trainer = ImageTrainer(tiny_vlm_path("llava_next"), args, env=OddEvenEnv)
    trainer.calls = {"messages": 0, "parse": 0, "raised": 0}
    before = params_by_name(trainer.model)
    start_rollout(trainer)
    batch = trainer.collect_rollout()
    tokenizer = trainer.processing_class.tokenizer
    valid = batch.valid.flatten().tolist()
    for prompt, text, ok, reward in zip(batch.prompts, batch.texts, valid, batch.env_rewards.flatten().tolist()):
        seen = tokenizer.decode(prompt["input_ids"])  # the model saw the user's prompt, with this episode's number
        number = int(seen.split("Is ")[1].split(" even or odd? Answer with one word.")[0])
        if ok:  # the user's action reached the env: rewarded exactly when the parity answer was right
            assert reward == float(len(text) % 2 == number % 2)
    assert any(valid) and (batch.env_rewards[batch.valid] > 0).any(), "a valid answer should earn a reward"
    assert not all(valid) and trainer.parse_errors == trainer.calls["raised"] > 0

    trainer.train()
    steps = args.batch_size + args.total_env_steps  # the rollout above, then training
    assert trainer.calls["messages"] >= steps and trainer.calls["parse"] == steps
    # every raise was counted as a parse error (an invalid output), none crashed; the other outputs were valid
    assert trainer.parse_errors == trainer.calls["raised"]
    assert 0 < trainer.state.log_history[-1]["env/invalid_action_rate"] < 1
    after = params_by_name(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def without_images(messages):
    """TRL's convention: the same messages with ``{"type": "image"}`` placeholders instead of the images."""
    return [
        {**m, "content": [{"type": "image"} if p["type"] == "image" else p for p in m["content"]]} for m in messages
    ]


def test_trl_style_image_placeholders_are_filled_with_the_steps_frames(tiny_vlm_path, tmp_path):
    """A `build_messages` written as in TRL's examples (placeholders, no images) gives exactly the prompts of the same
    messages with the frames in them: earlier turns' frames from `info["history"]` first, then the observation. A
    hook that writes fewer placeholders than the step has frames gets an error that names it."""
    placeholders = {"n": None}  # None: one per frame; an int: that many, all in the last message

    class PlaceholderTrainer(VLMPPOTrainer):
        def build_messages(self, observation, info):
            messages = without_images(super().build_messages(observation, info))
            if placeholders["n"] is not None:
                messages = [{"role": "user", "content": [{"type": "image"}] * placeholders["n"] + [
                    {"type": "text", "text": "Which action?"}]}]
            return messages

    args = make_args(tmp_path, num_envs=2, history_length=2)
    trainer = PlaceholderTrainer(tiny_vlm_path("llava_next"), args, env="MiniGrid-Empty-5x5-v0")
    obs, infos = trainer.envs.reset(seed=0)
    for _ in range(2):  # two steps: each env's info carries two earlier frames
        obs, _, _, _, infos = trainer.envs.step(np.zeros(2, dtype=np.int64))  # turn left: never ends
    infos = unbatch_infos(infos, 2)
    assert all(len(i["history"]) == 2 for i in infos)
    # Different frames per turn, so a wrong order would give other pixels.
    frames = [t["frame"] for t in infos[0]["history"]] + [obs[0]]
    assert not np.array_equal(frames[0], frames[2])

    inputs, counts, _ = trainer._prompt(list(obs), infos)
    expected = trainer.build_model_inputs([trainer.task.build_messages(o, i) for o, i in zip(obs, infos)])
    assert counts == [3, 3] and inputs.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(inputs[key], expected[key], rtol=0, atol=0)
    out = trainer.act(list(obs), infos)  # and the trainer acts on them
    assert len(out.prompts) == 2 and out.prompts[0]["pixel_values"].shape[0] == 3

    placeholders["n"] = 1
    with pytest.raises(ValueError, match=r"`build_messages` returned 1 image placeholder.*3 frame\(s\): 2 from"):
        trainer._prompt(list(obs), infos)


# ----------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_envs": 3, "num_steps": 3, "num_mini_batches": 2}, "divide batch_size"),
        ({"num_mini_batches": 2, "mini_batch_size": 2}, "either"),
        ({"num_mini_batches": None, "mini_batch_size": 2, "per_device_train_batch_size": 3}, "per_device_train_batch"),
        ({"total_env_steps": 3}, "smaller than one update"),
        ({"cot_logprob_coef": 1.5}, r"\[0, 1\]"),
        ({"kl_coef": -1.0}, ">= 0"),
        ({"invalid_action": "skip"}, "invalid_action"),
        ({"ref_model_quantization": "2bit"}, "ref_model_quantization"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_config_rejects_inconsistent_settings(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_config_derives_sizes(tmp_path):
    args = make_args(tmp_path, num_envs=4, num_steps=8, total_env_steps=100, num_mini_batches=4,
                     per_device_train_batch_size=2)
    assert (args.batch_size, args.mini_batch_size, args.gradient_accumulation_steps) == (32, 8, 4)
    assert args.num_updates == 3 and args.max_steps == 3


def test_env_argument_errors(tiny_vlm_path, tmp_path):
    with pytest.raises(TypeError, match="factory"):
        VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path), env=ColorChoiceEnv())
    with pytest.raises(KeyError, match="No task is registered"):
        VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path), env="CartPole-v1")


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant", "cosine_with_min_lr"])
def test_scheduler_kwargs_default_fits_the_chosen_scheduler(tmp_path, scheduler):
    """The paper's `min_lr` floor is the default only for `cosine_with_min_lr`; another `--lr_scheduler_type` must
    build its scheduler (it used to fail: `get_linear_schedule_with_warmup() got an unexpected keyword 'min_lr'`)."""
    from transformers.optimization import get_scheduler

    args = make_args(tmp_path, lr_scheduler_type=scheduler)
    assert args.lr_scheduler_kwargs == ({"min_lr": 1e-9} if scheduler == "cosine_with_min_lr" else {})
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    get_scheduler(scheduler, optimizer, num_warmup_steps=0, num_training_steps=10,
                  scheduler_specific_kwargs=args.lr_scheduler_kwargs)
