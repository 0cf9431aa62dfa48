"""Saving, loading, resuming, evaluating and pushing a trained agent."""

import fnmatch
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from peft import LoraConfig
from test_trainer import make_args, params_by_name, start_rollout
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

from vlm_env_ppo import VLMPPOTrainer
from vlm_env_ppo.agent import VLMAgent
from vlm_env_ppo.models import TINY_FAMILIES
from vlm_env_ppo.tasks import COLOR_CHOICE


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


# The language model's attention and MLP projections, by the module names transformers gives every family (the LM is
# `language_model`, Idefics3's and SmolVLM's `text_model`), as the README's supported-models table recommends: LoRA
# on them leaves the vision tower and the projector alone.
LM_LORA_TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f != "llava_next"])  # llava_next: the tests above
def test_every_family_trains_saves_reloads_and_evaluates(tiny_vlm_path, tmp_path, family):
    """What a new user does with a model of each family: LoRA PPO on its language model, save, load the folder as a
    `VLMAgent`, which acts and values exactly as the trainer did, and evaluate it."""
    args = make_args(tmp_path, max_new_tokens=8, num_steps=1, total_env_steps=4, num_mini_batches=1)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=LM_LORA_TARGETS)
    trainer = VLMPPOTrainer(tiny_vlm_path(family), args, env="gym_cards/NumberLine-v0", peft_config=peft)
    lora = [n for n, _ in trainer.model.named_parameters() if "lora_" in n]
    assert lora and all("language_model" in n or "text_model" in n for n in lora), "the LoRA targets should match the language model only"
    before = params_by_name(trainer.model)
    trainer.train()
    after = params_by_name(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any("lora_" in n for n in changed) and any(n.startswith("value_head.") for n in changed)
    assert changed <= {n for n, p in trainer.model.named_parameters() if p.requires_grad}

    out = tmp_path / "agent"
    trainer.save_model(str(out))
    obs, infos = observations("gym_cards/NumberLine-v0", 3, seed=5)
    expected = trainer.act(obs, infos, greedy=True, score=False).texts
    agent = VLMAgent.from_pretrained(str(out))
    assert agent.act_batch(obs, infos, greedy=True)[1] == expected
    torch.testing.assert_close(agent.value(obs, infos), trainer.value_of(obs, infos), atol=1e-5, rtol=0)
    result = agent.evaluate(num_episodes=2, seed=0, batch_size=2)
    assert len(result.episodes) == 2 and 0.0 <= result.invalid_action_rate <= 1.0


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
    leftover = run_dir / "_tmp-checkpoint-2"  # "_*": never uploaded by push_to_hub
    assert leftover.is_dir() and get_last_checkpoint(str(run_dir)) == str(run_dir / "checkpoint-1")
    agent = VLMAgent.from_pretrained(str(run_dir / "checkpoint-1"))
    obs, infos = observations("gym_cards/NumberLine-v0", 2, seed=0)
    assert len(agent.act_batch(obs, infos)[1]) == 2
    # resuming from it works, and the leftover temporary folder is gone when training starts
    at_start = {}

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            at_start.update(step=state.global_step, leftover=leftover.exists())

    trainer2 = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0", callbacks=[AtStart()])
    trainer2.train(resume_from_checkpoint=True)
    assert at_start == {"step": 1, "leftover": False}
    assert trainer2.state.global_step == args.num_updates == 3
    assert not any(p.name.startswith(("_", ".")) for p in run_dir.iterdir())


def test_interrupted_save_leftovers_are_cleaned_up_and_never_resumed_from(tmp_path):
    """Temporary folders of an interrupted save are never a checkpoint (resume, rotation); `train` removes them,
    except an ``_old-checkpoint-N`` whose ``checkpoint-N`` is missing: that is the only copy, and it is put back."""
    for name in ("checkpoint-1", "checkpoint-3", "_tmp-checkpoint-9", "_old-checkpoint-3", "_old-checkpoint-4",
                 ".tmp-checkpoint-8", "_notes"):  # fmt: skip
        (tmp_path / name).mkdir()
    (tmp_path / "_old-checkpoint-4" / "value_head.safetensors").write_text("kept")
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3")
    assert sort_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-1"), str(tmp_path / "checkpoint-3")]
    VLMPPOTrainer._clean_up_interrupted_saves(SimpleNamespace(args=SimpleNamespace(output_dir=str(tmp_path))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_notes", "checkpoint-1", "checkpoint-3", "checkpoint-4"]
    assert (tmp_path / "checkpoint-4" / "value_head.safetensors").read_text() == "kept"


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
    for step in before:  # no checkpoint is corrupt: the agent and the resume state all load
        VLMAgent.from_pretrained(str(out / f"checkpoint-{step}"))
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            assert torch.load(out / f"checkpoint-{step}" / name, weights_only=False) is not None
        json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
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


def test_evaluation_under_another_prefix_goes_into_the_model_card(tiny_vlm_path, tmp_path):
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path), env="vlm_env_ppo/ColorChoice-v0")
    metrics = trainer.evaluate(num_episodes=2, metric_key_prefix="test")
    assert metrics["test/episodes"] == 2 and not any(k.startswith("eval/") for k in metrics)
    out = tmp_path / "agent"
    trainer.save_model(str(out))
    card = (out / "README.md").read_text()
    assert "invalid-action rate" in card and "over 2 episodes" in card
    assert json.loads((out / "vlm_env_ppo.json").read_text())["last_eval"]["eval/episodes"] == 2


def test_evaluation_leaves_the_global_random_streams_as_they_were(tiny_vlm_path, tmp_path):
    """`evaluate` seeds every global RNG for its episodes; the training draws after it must not notice."""
    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), make_args(tmp_path), env="vlm_env_ppo/ColorChoice-v0")

    def seed_and_draw(evaluate: bool):
        random.seed(5), np.random.seed(5), torch.manual_seed(5)
        if evaluate:
            trainer.evaluate(num_episodes=2, seed=0, greedy=False)
        return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()

    assert seed_and_draw(evaluate=True) == seed_and_draw(evaluate=False)


class StopTraining(Exception):
    pass


def optimizer_and_rng_state(trainer) -> dict:
    optimizer = trainer.optimizer.state_dict()["state"]
    return {
        "optimizer": {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.items()},
        "lr": trainer.lr_scheduler.get_last_lr(),
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def test_resume_restores_optimizer_scheduler_and_rng_states(tiny_vlm_path, tmp_path):
    args = make_args(tmp_path, save_strategy="steps", save_steps=1, lr_scheduler_type="linear")  # 2 updates
    saved = {}

    class AtSave(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            random.random(), np.random.rand()  # so the saved python/numpy states are not the freshly seeded ones

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 1:
                saved.update(optimizer_and_rng_state(trainer))

    trainer = VLMPPOTrainer(tiny_vlm_path("llava_next"), args, env="vlm_env_ppo/ColorChoice-v0", callbacks=[AtSave()])
    trainer.train()
    resumed = {}

    class AtResume(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            resumed.update(optimizer_and_rng_state(trainer2), step=state.global_step)
            raise StopTraining

    trainer2 = VLMPPOTrainer(
        tiny_vlm_path("llava_next"), args, env="vlm_env_ppo/ColorChoice-v0", callbacks=[AtResume()]
    )
    checkpoint = os.path.join(args.output_dir, "checkpoint-1")
    with mock.patch.object(VLMPPOTrainer, "_load_scaler", autospec=True) as load_scaler, pytest.raises(StopTraining):
        trainer2.train(resume_from_checkpoint=checkpoint)
    load_scaler.assert_called_once_with(trainer2, checkpoint)  # (no scaler on the CPU: fp32)
    assert resumed["step"] == 1
    assert saved["optimizer"] and resumed["optimizer"].keys() == saved["optimizer"].keys()
    for i, tensors in saved["optimizer"].items():
        assert tensors.keys() == resumed["optimizer"][i].keys()
        assert all(torch.equal(v, resumed["optimizer"][i][k]) for k, v in tensors.items())
    assert resumed["lr"] == saved["lr"] and saved["lr"][0] < args.learning_rate  # the linear decay had begun
    assert torch.equal(resumed["torch"], saved["torch"]) and resumed["python"] == saved["python"]
    numpy_saved, numpy_resumed = saved["numpy"], resumed["numpy"]
    assert numpy_resumed[0] == numpy_saved[0] and np.array_equal(numpy_resumed[1], numpy_saved[1])
    assert numpy_resumed[2:] == numpy_saved[2:]


def test_periodic_push_uploads_a_complete_loadable_folder(tiny_vlm_path, tmp_path):
    """With ``push_to_hub``, every checkpoint is also uploaded (the network is mocked at `hf_api`); each upload must be
    an agent folder that loads and continues training."""
    api = mock.MagicMock()
    api.create_repo.return_value = mock.MagicMock(repo_id="someone/numberline-agent")
    pushes = []

    def upload_folder(repo_id, folder_path, ignore_patterns=None, path_in_repo=None, **kwargs):
        # What the Hub receives: a copy of the folder now (later saves change it), without the ignored paths.
        copy = tmp_path / f"push-{len(pushes)}"
        for file in Path(folder_path).rglob("*"):
            relative = file.relative_to(folder_path).as_posix()
            if file.is_file() and not any(fnmatch.fnmatch(relative, p) for p in ignore_patterns or ()):
                (copy / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, copy / relative)
        pushes.append((repo_id, path_in_repo, copy))
        return mock.MagicMock()

    api.upload_folder.side_effect = upload_folder
    args = make_args(
        tmp_path, push_to_hub=True, hub_model_id="someone/numberline-agent", save_strategy="steps", save_steps=1
    )
    with mock.patch("transformers.trainer.hf_api", return_value=api):
        trainer = VLMPPOTrainer(
            tiny_vlm_path("llava_next"), args, env="gym_cards/NumberLine-v0",
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
        )  # fmt: skip
        (Path(args.output_dir) / "_tmp-checkpoint-7").mkdir(parents=True)  # a crash's leftover: removed, never pushed
        trainer.train()
    assert [(repo, where) for repo, where, _ in pushes] == [("someone/numberline-agent", None)] * args.num_updates
    folder = pushes[-1][2]
    names = set(os.listdir(folder))
    assert {"adapter_model.safetensors", "value_head.safetensors", "vlm_env_ppo.json", "README.md"} <= names
    assert not any(n.startswith(("_", "checkpoint-")) for n in names)
    checkpoint = Path(args.output_dir) / f"checkpoint-{args.num_updates}"
    assert (folder / "value_head.safetensors").read_bytes() == (checkpoint / "value_head.safetensors").read_bytes()
    card = (folder / "README.md").read_text()
    assert "vlm-env-ppo agent" in card and f'VLMAgent.from_pretrained("{args.hub_model_id}")' in card
    agent = VLMAgent.from_pretrained(str(folder))
    obs, infos = observations("gym_cards/NumberLine-v0", 2, seed=0)
    assert len(agent.value(obs, infos)) == 2
    again = VLMPPOTrainer(str(folder), make_args(tmp_path / "b"), env="gym_cards/NumberLine-v0")
    again.train()
    assert again.is_peft and np.isfinite(again.state.log_history[-1]["losses/policy_loss"])


def test_episode_statistics_start_afresh_when_train_resets_the_envs(tiny_vlm_path, tmp_path):
    """`train` resets the envs, cutting the episodes in progress: steps collected before (here by a rollout collected
    by hand) must not be counted in the lengths and returns of the next episodes."""
    from distributed_script import UnevenEnv

    args = make_args(tmp_path)  # 2 updates of 2 steps x 2 envs
    trainer = VLMPPOTrainer(
        tiny_vlm_path("llava_next"), args, env=lambda: UnevenEnv(3, truncate=False, reward=1.0), task=COLOR_CHOICE
    )
    start_rollout(trainer)
    trainer.collect_rollout()  # 2 steps into each env's first episode
    trainer.train()  # each env's first episode after the reset ends at its 3rd step, in update 2
    ended = [h for h in trainer.state.log_history if h.get("env/episodes")]
    assert [(h["env/episodes"], h["env/episode_length"], h["env/episode_return"]) for h in ended] == [(2, 3.0, 3.0)]
