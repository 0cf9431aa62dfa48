"""Expert SFT data from the envs and the SFT → PPO pipeline (`vlm_env_ppo.sft`)."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from datasets import load_from_disk
from transformers import AutoProcessor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from test_trainer import make_args

from vlm_env_ppo import VLMPPOTrainer
from vlm_env_ppo.agent import VLMAgent, build_model_inputs
from vlm_env_ppo.envs.solvers import blackjack_basic_strategy, number_line_oracle, points_expert_action
from vlm_env_ppo.sft import (
    blackjack_expert,
    default_lora_config,
    default_sft_config,
    evaluate_policy,
    expert_action_accuracy,
    generate_sft_dataset,
    points_expert,
    run_sft,
)
from vlm_env_ppo.tasks import get_task


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: under ``pytest -n 2`` on a 2-core machine, two workers with two OpenMP threads each make
    the threads spin-wait on each other and the tiny-model runs here take ~7x longer (measured: 181 s vs 25 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ENV_IDS = [
    "gym_cards/NumberLine-v0",
    "gym_cards/EZPoints-v0",
    "gym_cards/Points24-v0",
    "gym_cards/Blackjack-v0",
    "vlm_env_ppo/ColorChoice-v0",
]


def reference_action(env_id: str, info: dict, env: gym.Env) -> int:
    """The reference policies of `vlm_env_ppo.envs.solvers`, called directly (not through the SFT experts)."""
    if env_id == "gym_cards/NumberLine-v0":
        return number_line_oracle(info)
    if env_id == "gym_cards/Blackjack-v0":
        return blackjack_basic_strategy(info)
    if env_id == "vlm_env_ppo/ColorChoice-v0":
        return env.unwrapped._color  # the hidden answer
    return points_expert_action(info, action_names=env.unwrapped.action_names)


def answer_text(row) -> str:
    return row["completion"][0]["content"][0]["text"]


# ----------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_targets_are_expert_actions_and_images_are_env_frames(env_id):
    """Replay every episode with its seed and the played actions: each row's image is the env's frame, its prompt is
    the trainer's prompt for that step, and its target parses (with the env's own parser) to the reference action."""
    ds = generate_sft_dataset(env_id, num_episodes=6, seed=3, random_action_prob=0.3)
    task = get_task(env_id)
    env = gym.make(env_id)
    obs = info = None
    for row in ds:
        if row["step"] == 0:
            obs, info = env.reset(seed=row["seed"])
            assert row["seed"] == 3 + row["episode"]
        np.testing.assert_array_equal(np.asarray(row["images"][0]), obs)
        assert row["prompt"][0]["content"][1]["text"] == task.prompt(info)
        expected = reference_action(env_id, info, env)
        parsed = task.parse_action(answer_text(row), info)
        assert parsed.valid and parsed.action == row["action"] == expected
        assert row["action_name"] == task.action_names[expected]
        assert json.loads(answer_text(row))["thoughts"]
        if row["expert"]:
            assert row["played_action"] == row["action"]
        obs, reward, _, _, info = env.step(row["played_action"])
        assert reward == row["reward"]
    assert (~np.asarray(ds["expert"])).any(), "random_action_prob=0.3 should give some random steps"


def test_action_only_targets_and_expert_only_data():
    ds = generate_sft_dataset("gym_cards/EZPoints-v0", num_episodes=4, seed=0, action_only=True)
    task = get_task("gym_cards/EZPoints-v0")
    for row in ds:
        assert json.loads(answer_text(row)) == {"action": row["action_name"]}
        assert row["prompt"][0]["content"][1]["text"].endswith('{"action": "<one of the actions above>"}')
        assert row["expert"] and row["played_action"] == row["action"] and row["action_only"]
    # the expert solves every EZPoints deal: each episode ends with '=' and +10
    finals = [r for r in ds if r["action_name"] == "="]
    assert len(finals) == 4 and all(r["reward"] == 10.0 for r in finals)
    assert task.parse_action(answer_text(ds[0])).action == ds[0]["action"]


def test_generation_is_deterministic_and_round_trips_through_disk(tmp_path):
    ds = generate_sft_dataset("gym_cards/Blackjack-v0", num_episodes=5, seed=7, random_action_prob=0.5)
    again = generate_sft_dataset("gym_cards/Blackjack-v0", num_episodes=5, seed=7, random_action_prob=0.5)
    ds.save_to_disk(str(tmp_path / "data"))
    loaded = load_from_disk(str(tmp_path / "data"))
    assert loaded.features == ds.features and len(loaded) == len(ds) == len(again)
    for a, b, c in zip(ds, loaded, again):
        for key in a:
            if key == "images":
                np.testing.assert_array_equal(np.asarray(a[key][0]), np.asarray(b[key][0]))
                np.testing.assert_array_equal(np.asarray(a[key][0]), np.asarray(c[key][0]))
            else:
                assert a[key] == b[key] == c[key], key


def test_expert_explanations():
    env = gym.make("gym_cards/EZPoints-v0")
    _, info = env.reset(seed=0, options={"ranks": [13, 2]})
    action, thoughts = points_expert(None, info, env.unwrapped)
    assert env.unwrapped.action_names[action] == "2"
    assert "K and 2, worth 10 and 2" in thoughts and "2 + 10 = 12" in thoughts and "type '2' next" in thoughts
    _, _, _, _, info = env.step(env.unwrapped.action_names.index("*"))  # off the plan: no undo, so submit
    action, thoughts = points_expert(None, info, env.unwrapped)
    assert env.unwrapped.action_names[action] == "=" and "does not start my solution" in thoughts
    _, info = env.reset(seed=0, options={"ranks": [13, 2]})
    for token in ("2", "+", "10"):
        _, _, _, _, info = env.step(env.unwrapped.action_names.index(token))
    action, thoughts = points_expert(None, info, env.unwrapped)
    assert env.unwrapped.action_names[action] == "=" and "equals 12" in thoughts

    info = {"player_cards": ["A", "7"], "player_sum": 18, "usable_ace": True, "dealer_card": "9", "dealer_value": 9}
    action, thoughts = blackjack_expert(None, info, None)
    assert action == 1 and "soft 18" in thoughts and thoughts.endswith("so I hit.")
    info = {"player_cards": ["10", "3"], "player_sum": 13, "usable_ace": False, "dealer_card": "5", "dealer_value": 5}
    action, thoughts = blackjack_expert(None, info, None)
    assert action == 0 and "hard 13" in thoughts and thoughts.endswith("so I stand.")


def test_bad_arguments():
    with pytest.raises(ValueError, match="random_action_prob"):
        generate_sft_dataset("gym_cards/NumberLine-v0", 1, random_action_prob=1.5)
    with pytest.raises(KeyError, match="No expert"):
        generate_sft_dataset("CartPole-v1", 1, task=get_task("gym_cards/NumberLine-v0"))
    with pytest.raises(ValueError, match="columns"):
        run_sft("unused", generate_sft_dataset("gym_cards/NumberLine-v0", 1).remove_columns("images"))


# ----------------------------------------------------------------------------------------------- same prompt tokens
@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl"])
def test_sft_prompt_tokens_equal_ppo_prompt_tokens(tiny_vlm_path, family):
    """TRL's collator turns a row into exactly the prompt tokens the PPO rollout builds for that step, followed by
    the target answer and EOS, the only tokens with a loss."""
    import vlm_env_ppo.models  # noqa: F401  (tiny Qwen2.5-VL processors load without torchvision)

    processor = AutoProcessor.from_pretrained(tiny_vlm_path(family))
    ds = generate_sft_dataset("gym_cards/EZPoints-v0", num_episodes=1, seed=0)
    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    env = gym.make("gym_cards/EZPoints-v0")
    obs, info = env.reset(seed=0)
    task = get_task("gym_cards/EZPoints-v0")
    tokenizer = processor.tokenizer
    for row in ds:
        batch = collator([{k: row[k] for k in ("prompt", "completion", "images")}])
        ppo = build_model_inputs(processor, [task.build_messages(obs, info)])
        n = ppo["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][0, :n], ppo["input_ids"][0])
        for key in ("pixel_values", "image_sizes", "image_grid_thw"):
            if key in ppo:
                torch.testing.assert_close(batch[key], ppo[key])
        assert (batch["labels"][0, :n] == -100).all()
        target = tokenizer.decode(batch["labels"][0, n:][batch["labels"][0, n:] != -100])
        assert target.startswith(answer_text(row) + tokenizer.eos_token)
        obs, _, _, _, info = env.step(row["played_action"])


# ----------------------------------------------------------------------------------------------- end to end
def test_sft_raises_valid_and_success_rates_then_ppo_starts_from_it(tiny_vlm_path, tmp_path):
    """A random tiny VLM never writes a parsable answer. SFT (LoRA, merged) on ColorChoice expert data, whose answer
    is only in the image, must make it answer validly and correctly; PPO then loads the checkpoint and trains."""
    env_id = "vlm_env_ppo/ColorChoice-v0"
    base = tiny_vlm_path("llava_next")
    before = evaluate_policy(base, env_id, num_episodes=32, seed=10_000, max_new_tokens=24)
    assert before["valid_action_rate"] <= 0.1

    ds = generate_sft_dataset(env_id, num_episodes=128, seed=0)
    args = default_sft_config(
        str(tmp_path / "sft"),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        activation_checkpointing=False,
        logging_steps=8,
        disable_tqdm=True,
        seed=0,
    )
    # A random tiny model's lm_head gives near-uniform logits; LoRA alone barely sharpens them, so train it too.
    out = run_sft(base, ds, args, peft_config=default_lora_config(modules_to_save=["lm_head"]))
    saved = json.loads((tmp_path / "sft" / "vlm_env_ppo_sft.json").read_text())
    assert saved["env_id"] == env_id and saved["stage"] == "sft" and saved["lora"]
    assert not (tmp_path / "sft" / "adapter_config.json").exists(), "the adapter should be merged"
    agent = VLMAgent.from_pretrained(out)  # the SFT folder loads as an agent: env, prompt variant from its json
    assert agent.config["env_id"] == env_id and agent.value_head is None
    assert saved["task"]["class"] == "vlm_env_ppo.tasks:Task" and agent.task == get_task(env_id)  # recorded, rebuilt

    after = evaluate_policy(out, env_id, num_episodes=32, seed=10_000, max_new_tokens=24)
    print(
        f"\nColorChoice SFT: valid-action rate {before['valid_action_rate']:.2f} -> {after['valid_action_rate']:.2f}, "
        f"success rate {before['success_rate']:.2f} -> {after['success_rate']:.2f}"
    )
    assert after["valid_action_rate"] >= 0.9
    assert after["success_rate"] >= 0.9 and after["success_rate"] >= before["success_rate"] + 0.25
    assert after["expert_action_accuracy"] >= 0.9 > before["expert_action_accuracy"]
    assert after["majority_action_accuracy"] <= 0.7  # red and blue frames both occur: the image decides

    ppo_args = make_args(  # test_trainer's tiny PPO settings
        tmp_path, output_dir=str(tmp_path / "ppo"), total_env_steps=4, num_mini_batches=1,
        per_device_train_batch_size=4, max_new_tokens=24, learning_rate=1e-4, temperature=0.2,
    )  # fmt: skip
    trainer = VLMPPOTrainer(out, ppo_args, env=env_id, peft_config=default_lora_config(r=4, lora_alpha=8))
    assert trainer.base_model_name == out, "PPO's base (and KL reference) must be the SFT model, not the raw base"
    before_params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = trainer.state.log_history[-1]
    assert trainer.state.global_step == 1
    assert logs["env/invalid_action_rate"] <= 0.5, "PPO should start from a policy that answers in the format"
    changed = [
        n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before_params[n])
    ]
    assert any("lora_" in n for n in changed)


def test_qlora_adapter_is_merged_into_an_unquantized_copy(tiny_vlm_path, tmp_path):
    """A 4-bit base cannot take merged weights: `run_sft` reloads it unquantized and merges the adapter there."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    base = tiny_vlm_path("llava_next")
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    args = default_sft_config(
        str(tmp_path / "qlora"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        activation_checkpointing=False,
        disable_tqdm=True,
        model_init_kwargs={"quantization_config": quantization, "dtype": torch.float32},
    )
    out = run_sft(base, generate_sft_dataset("vlm_env_ppo/ColorChoice-v0", num_episodes=8), args)
    merged = AutoModelForImageTextToText.from_pretrained(out)
    original = AutoModelForImageTextToText.from_pretrained(base)
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    merged_weight, original_weight = merged.state_dict()[name], original.state_dict()[name]
    assert merged_weight.dtype == torch.float32 and not torch.equal(merged_weight, original_weight)


def test_sft_command_trains_on_a_saved_dataset(tmp_path, capsys):
    """``vlm-env-ppo sft`` (the embedded quickstart config, shortened) on a dataset saved with `save_to_disk`."""
    from transformers import AutoModelForImageTextToText

    from vlm_env_ppo.cli import main

    generate_sft_dataset("vlm_env_ppo/ColorChoice-v0", num_episodes=8, seed=0).save_to_disk(str(tmp_path / "data"))
    main(
        [
            "sft",
            "--output_dir",
            str(tmp_path / "out"),
            "--dataset_name",
            str(tmp_path / "data"),
            "--max_steps",
            "2",
            "--eval_episodes",
            "2",
            "--disable_tqdm",
            "true",
        ]
    )
    printed = capsys.readouterr().out
    assert "8 expert steps on vlm_env_ppo/ColorChoice-v0" in printed and "valid-action rate" in printed
    assert f"--model_name_or_path {tmp_path / 'out'} --env_id vlm_env_ppo/ColorChoice-v0" in printed
    saved = json.loads((tmp_path / "out" / "vlm_env_ppo_sft.json").read_text())
    assert saved["env_id"] == "vlm_env_ppo/ColorChoice-v0" and saved["sft_examples"] == 8
    AutoModelForImageTextToText.from_pretrained(str(tmp_path / "out"))  # a plain model folder, adapter merged


def test_example_script_runs_sft_then_ppo(tmp_path):
    """`examples/sft_then_ppo.py`, shortened: data, SFT, PPO from the SFT model, results for the three stages."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "sft_then_ppo.py"
    spec = importlib.util.spec_from_file_location("sft_then_ppo", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(
        [
            "--output_dir",
            str(tmp_path),
            "--episodes",
            "16",
            "--sft_epochs",
            "1",
            "--eval_episodes",
            "2",
            "--max_new_tokens",
            "24",
            "--ppo_env_steps",
            "32",
        ]
    )
    assert set(results) >= {"base", "sft", "ppo"} and results["sft_examples"] == 16
    assert (tmp_path / "sft" / "model.safetensors").exists() and (tmp_path / "ppo" / "vlm_env_ppo.json").exists()


def test_expert_action_accuracy_tells_an_image_reader_from_a_constant_answer():
    """Tier 2, scripted agents on NumberLine's expert states: the oracle scores 1, a constant answer scores the share
    of states where that action is the expert's (which `majority_action_accuracy` bounds), an invalid output 0."""
    from vlm_env_ppo.actions import ParsedAction

    class Scripted:
        def __init__(self, choose):
            self.choose = choose

        def act_batch(self, observations, infos, greedy=True):
            return [self.choose(info) for info in infos], [""] * len(infos)

    env_id = "gym_cards/NumberLine-v0"
    oracle = Scripted(lambda info: ParsedAction(number_line_oracle(info), True, 0))
    always_plus = Scripted(lambda info: ParsedAction(1, True, 0))
    invalid = Scripted(lambda info: ParsedAction(None, False, None))
    perfect = expert_action_accuracy(oracle, env_id, num_episodes=20, seed=0, batch_size=3)
    constant = expert_action_accuracy(always_plus, env_id, num_episodes=20, seed=0)
    assert perfect["expert_action_accuracy"] == 1.0 and perfect["expert_states"] > 20
    assert 0 < constant["expert_action_accuracy"] <= constant["majority_action_accuracy"] < 1
    assert expert_action_accuracy(invalid, env_id, num_episodes=5, seed=0)["expert_action_accuracy"] == 0.0
