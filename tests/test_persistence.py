"""Saving, loading, resuming, evaluating and pushing a trained agent."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from peft import LoraConfig
from test_trainer import make_args

from vlm_env_ppo import VLMPPOTrainer
from vlm_env_ppo.agent import VLMAgent


def observations(env_id, n, seed):
    import gymnasium as gym

    env = gym.make(env_id)
    obs, infos = zip(*(env.reset(seed=seed + k) for k in range(n)))
    return list(obs), list(infos)


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
def test_save_load_same_greedy_actions_and_values(tiny_vlm_path, tmp_path, peft):
    args = make_args(tmp_path, max_new_tokens=12)
    trainer = VLMPPOTrainer(
        tiny_vlm_path("llava_next"),
        args,
        env="gym_cards/NumberLine-v0",
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if peft else None,
    )
    trainer.train()
    trainer.evaluate(num_episodes=4)
    out = tmp_path / "agent"
    trainer.save_model(str(out))
    expected = {"value_head.safetensors", "vlm_env_ppo.json", "README.md", "processor_config.json"}
    expected |= {"adapter_model.safetensors", "adapter_config.json"} if peft else {"model.safetensors", "config.json"}
    assert expected <= set(os.listdir(out))
    card = (out / "README.md").read_text()
    assert "gym_cards/NumberLine-v0" in card and "success rate" in card and "PPO" in card
    assert "fine-tuned version of a local model" in card and "[None]" not in card  # the tiny base is a local path
    assert f'VLMAgent.from_pretrained("{out.name}")' in card and "pipeline(" not in card  # how the agent is used

    obs, infos = observations("gym_cards/NumberLine-v0", 6, seed=5)
    trainer_out = trainer.act(obs, infos, greedy=True, score=False)
    trainer_values = trainer.value_of(obs, infos)

    agent = VLMAgent.from_pretrained(str(out))
    parsed, texts = agent.act_batch(obs, infos, greedy=True)
    assert texts == trainer_out.texts
    assert [p.action for p in parsed] == [p.action for p in trainer_out.parsed]
    torch.testing.assert_close(agent.value(obs, infos), trainer_values, atol=1e-5, rtol=0)

    # ... and the folder continues training: same weights, same value head.
    resumed = VLMPPOTrainer(str(out), make_args(tmp_path / "again", max_new_tokens=12), env="gym_cards/NumberLine-v0")
    torch.testing.assert_close(resumed.value_of(obs, infos), trainer_values, atol=1e-5, rtol=0)
    assert resumed.act(obs, infos, greedy=True, score=False).texts == trainer_out.texts
    assert resumed.is_peft == peft


def test_evaluation_is_reproducible(tiny_vlm_path, tmp_path):
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path), env="gym_cards/NumberLine-v0")
    trainer.save_model(str(tmp_path / "agent"))
    for greedy in (True, False):
        first = trainer.evaluate(num_episodes=6, seed=3, greedy=greedy)
        second = trainer.evaluate(num_episodes=6, seed=3, greedy=greedy)
        assert first == second and first["eval/episodes"] == 6
    agent = VLMAgent.from_pretrained(str(tmp_path / "agent"))
    a, b = agent.evaluate(num_episodes=6, seed=3), agent.evaluate(num_episodes=6, seed=3)
    assert a == b
    assert a.success_rate == trainer.evaluate(num_episodes=6, seed=3)["eval/success_rate"]
    assert 0.0 <= a.invalid_action_rate <= 1.0 and a.mean_episode_length >= 1


def test_interrupted_checkpoint_write_leaves_previous_loadable(tiny_vlm_path, tmp_path):
    args = make_args(tmp_path, save_strategy="steps", save_steps=1, total_env_steps=12)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0")
    calls = {"n": 0}
    original = trainer._save_rng_state

    def crash_on_second_save(output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected mid-save)")
        return original(output_dir)

    trainer._save_rng_state = crash_on_second_save
    with pytest.raises(OSError, match="injected"):
        trainer.train()
    run_dir = Path(args.output_dir)
    assert (run_dir / "checkpoint-1").is_dir()
    assert not (run_dir / "checkpoint-2").exists(), "a half-written checkpoint must not look like a checkpoint"
    agent = VLMAgent.from_pretrained(str(run_dir / "checkpoint-1"))
    obs, infos = observations("gym_cards/NumberLine-v0", 2, seed=0)
    assert len(agent.act_batch(obs, infos)[1]) == 2
    # resuming from it works and cleans up the leftover temporary folder on the next save
    trainer2 = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0")
    trainer2.train(resume_from_checkpoint=True)
    assert trainer2.state.global_step == args.num_updates == 3
    assert not any(p.name.startswith(".tmp-") for p in run_dir.iterdir())


def test_save_total_limit_is_honoured(tiny_vlm_path, tmp_path):
    args = make_args(tmp_path, save_strategy="steps", save_steps=1, total_env_steps=16, save_total_limit=2)
    VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0").train()
    assert sorted(p.name for p in Path(args.output_dir).glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


def test_sigkill_mid_run_then_resume(tiny_vlm_path, tmp_path):
    """A real training process is killed with SIGKILL mid-run; the resumed run finishes where it should."""
    out = tmp_path / "run"
    updates = 12
    cmd = [
        sys.executable, "-m", "vlm_env_ppo.cli", "train",
        "--config", str(Path(__file__).parent.parent / "vlm_env_ppo" / "configs" / "quickstart.yaml"),
        "--model_name_or_path", tiny_vlm_path("llava_next"),
        "--output_dir", str(out), "--total_env_steps", str(8 * 4 * updates),
        "--save_steps", "1", "--save_total_limit", "3", "--warm_start_steps", "5", "--disable_tqdm", "true",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoint-3").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert before and before[-1] < updates, "the run should have been killed mid-way"
    for step in before:  # no checkpoint is corrupt
        VLMAgent.from_pretrained(str(out / f"checkpoint-{step}"))
    last_state = json.loads((out / f"checkpoint-{before[-1]}" / "vlm_env_ppo_state.json").read_text())
    assert last_state["env_steps"] == before[-1] * 32

    resumed = subprocess.run(
        [*cmd, "--resume_from_checkpoint", "true"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{8 * 4 * updates} env steps" in resumed.stdout  # the counter continued to the same total
    final_state = json.loads((out / f"checkpoint-{updates}" / "trainer_state.json").read_text())
    assert final_state["global_step"] == updates
    logged_steps = [h["step"] for h in final_state["log_history"] if "env/success_rate" in h]
    assert logged_steps[0] <= before[-1] < logged_steps[-1] == updates  # history from before the kill kept
    run_state = json.loads((out / f"checkpoint-{updates}" / "vlm_env_ppo_state.json").read_text())
    assert run_state["env_steps"] == 8 * 4 * updates
    assert run_state["total_episodes"] == 8 * 4 * updates  # one-step episodes, counted across the restart
    agent = VLMAgent.from_pretrained(str(out))
    assert agent.evaluate(num_episodes=4, seed=0).num_episodes == 4


def test_push_to_hub_uploads_a_complete_loadable_folder(tiny_vlm_path, tmp_path):
    args = make_args(tmp_path, hub_model_id="someone/numberline-agent")
    trainer = VLMPPOTrainer(
        tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0",
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    trainer.train()
    api = mock.MagicMock()
    api.create_repo.return_value = mock.MagicMock(repo_id="someone/numberline-agent")
    uploaded = {}

    def upload_folder(repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, folder_path=folder_path, files=sorted(os.listdir(folder_path)))
        return mock.MagicMock()

    api.upload_folder.side_effect = upload_folder
    with mock.patch("transformers.trainer.hf_api", return_value=api):
        trainer.push_to_hub()
    api.create_repo.assert_called_once()
    assert api.create_repo.call_args.args[0] == "someone/numberline-agent"
    assert uploaded["repo_id"] == "someone/numberline-agent"
    assert Path(uploaded["folder_path"]) == Path(args.output_dir)
    assert {"adapter_model.safetensors", "value_head.safetensors", "vlm_env_ppo.json", "README.md"} <= set(
        uploaded["files"]
    )
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "gym_cards/NumberLine-v0" in card and "vlm-env-ppo agent" in card
    # the uploaded folder reloads as an agent and continues training
    agent = VLMAgent.from_pretrained(uploaded["folder_path"])
    obs, infos = observations("gym_cards/NumberLine-v0", 2, seed=0)
    assert len(agent.value(obs, infos)) == 2
    again = VLMPPOTrainer(uploaded["folder_path"], make_args(tmp_path / "b"), env="gym_cards/NumberLine-v0")
    again.train()
    assert again.is_peft and np.isfinite(again.state.log_history[-1]["losses/policy_loss"])


def test_periodic_evaluation_during_training(tiny_vlm_path, tmp_path):
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=1, eval_episodes=2, total_env_steps=12)
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0")
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval/success_rate" in h]
    assert [h["step"] for h in evals] == [1, 2, 3] and all(h["eval/episodes"] == 2 for h in evals)


def test_save_writes_the_gathered_state_dict_not_local_shards(tiny_vlm_path, tmp_path):
    """Under ZeRO-3 / FSDP `Trainer.save_model` gathers the wrapper's full state dict and hands it to `_save`; the
    agent folder must hold those weights (the local parameters are empty shards there)."""
    from safetensors.torch import load_file

    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path), env="vlm_env_ppo/ColorChoice-v0")
    gathered = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
    head_key = next(k for k in gathered if k.startswith("value_head."))
    gathered[head_key] = torch.full_like(gathered[head_key], 0.5)
    gathered["policy.lm_head.weight"] = torch.full_like(gathered["policy.lm_head.weight"], 0.25)
    out = tmp_path / "agent"
    trainer._save(str(out), state_dict=gathered)
    head = load_file(out / "value_head.safetensors")
    assert torch.all(head[head_key[len("value_head."):]] == 0.5)
    saved = {}
    for shard in out.glob("*.safetensors"):
        if shard.name != "value_head.safetensors":
            saved.update(load_file(shard))
    lm_head = [v for k, v in saved.items() if k.endswith("lm_head.weight")]  # the family's checkpoint key layout
    assert len(lm_head) == 1 and torch.all(lm_head[0] == 0.25)
    assert not torch.all(trainer.model.policy.lm_head.weight == 0.25)  # the live model was not touched
    agent = VLMAgent.from_pretrained(str(out))
    assert torch.all(agent.policy.lm_head.weight == 0.25)
