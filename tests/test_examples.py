"""The example scripts (`examples/`), run as a user runs them: a subprocess per script, a tiny VLM built offline in
place of the Hub model (the same ``--model_name_or_path`` code path), and flags that shrink the paper's settings to
one PPO update. And every YAML of `examples/configs` parses with the CLI's parser into what the paper says.

`examples/sft_then_ppo.py` is run in tests/test_sft.py.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env
from PIL import Image
from trl import ModelConfig

from vlm_env_ppo import ParsedAction, VLMPPOConfig
from vlm_env_ppo.cli import TrainScriptArguments, parse_train_args

EXAMPLES = Path(__file__).parents[1] / "examples"
CONFIGS = EXAMPLES / "configs"
TASK_ENVS = {
    "numberline": "gym_cards/NumberLine-v0",
    "ezpoints": "gym_cards/EZPoints-v0",
    "points24": "gym_cards/Points24-v0",
    "blackjack": "gym_cards/Blackjack-v0",
}
# The paper's 7B settings made tiny for a CPU: fp32, no quantization (bitsandbytes' CPU 4-bit path is ~50x slower),
# a small LoRA, and 2 envs x 2 steps = 4 env steps = one PPO update with one optimizer step per epoch.
TINY_FLAGS = [
    "--dtype", "float32", "--load_in_4bit", "false", "--lora_r", "8", "--lora_alpha", "16",
    "--activation_checkpointing", "false", "--num_envs", "2", "--num_steps", "2", "--total_env_steps", "4",
    "--num_mini_batches", "1", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
    "--final_eval_episodes", "2", "--disable_tqdm", "true",
]  # fmt: skip


def run_example(script: str, *args: str, cwd: Path) -> str:
    """``python examples/<script> ARGS`` in ``cwd`` with one intra-op thread (2 pytest workers share 2 cores) and
    no Hub access; returns its stdout, failing with the output's tail if the script fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    command = [sys.executable, str(EXAMPLES / script), *args]
    proc = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def assert_saved_agent(out: Path, env_id: str | None, env_steps: int) -> dict:
    """The agent folder that `run_training` writes: LoRA adapter, value head, agent config, model card."""
    for name in ("adapter_config.json", "adapter_model.safetensors", "value_head.safetensors", "README.md"):
        assert (out / name).is_file(), f"{name} missing from the saved agent {out}"
    saved = json.loads((out / "vlm_env_ppo.json").read_text())
    assert saved["env_id"] == env_id and saved["is_peft"] and saved["env_steps"] == env_steps
    return saved


@pytest.mark.parametrize("name", list(TASK_ENVS))
def test_task_example_runs_its_paper_config(name, tiny_vlm_path, tmp_path):
    """No ``--config``: the script reads its LLaVA-7B YAML (the env kwargs and temperature below come only from
    there), the flags override it (LoRA rank, max_new_tokens), one PPO update runs, and the agent is saved."""
    out = tmp_path / "agent"
    stdout = run_example(
        f"{name}.py", "--model_name_or_path", tiny_vlm_path("llava_next"), "--output_dir", str(out), *TINY_FLAGS,
        cwd=tmp_path,
    )  # fmt: skip
    env_id = TASK_ENVS[name]
    assert f"vlm-env-ppo: 4 env steps on {env_id}." in stdout
    assert "Final evaluation (2 episodes, greedy)" in stdout
    saved = assert_saved_agent(out, env_id, env_steps=4)
    paper = yaml.safe_load((CONFIGS / f"{name}_llava_7b.yaml").read_text())
    assert saved["env_kwargs"] == paper["env_kwargs"]  # YAML
    assert saved["temperature"] == 0.2 and saved["cot_logprob_coef"] == 0.5  # YAML (paper)
    assert saved["max_new_tokens"] == 8 and saved["last_eval"]["eval/episodes"] == 2  # flags
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (8, 16, 0.05)  # flags, flags, YAML
    if name == "points24":
        assert "of the 2 evaluation deals have a solution" in stdout
    if name == "blackjack":
        assert "of the evaluation hands, basic strategy" in stdout


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_env_example_trains_with_its_own_task_and_its_agent_evaluates_from_the_command_line(
    tiny_vlm_path, tmp_path
):
    out = tmp_path / "agent"
    stdout = run_example(
        "custom_env.py", "--model_name_or_path", tiny_vlm_path("llava_next"), "--output_dir", str(out),
        "--num_steps", "4", "--total_env_steps", "16", "--max_new_tokens", "24", "--final_eval_episodes", "2",
        "--disable_tqdm", "true", cwd=tmp_path,
    )  # fmt: skip
    assert "vlm-env-ppo: 16 env steps on GoalGrid-v0." in stdout and "Final evaluation (2 episodes" in stdout
    # its `answer_grammar` constrains generation (the default): not one invalid output, in training or evaluation
    assert "invalid outputs 0.00 -> 0.00" in stdout and "invalid outputs 0.00 (" in stdout, stdout[-600:]
    saved = assert_saved_agent(out, env_id="GoalGrid-v0", env_steps=16)
    assert saved["task"]["class"] == "custom_env:GoalGridTask"
    # As the docstring says: `vlm-env-ppo eval` in another process finds the task (and the env) again.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_env_ppo.cli", "eval", str(out), "--trust_remote_code", "--num_episodes", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GoalGrid-v0" in proc.stdout and "invalid-action rate  0.000" in proc.stdout, proc.stdout

    # The env passes gymnasium's checks and the hooks keep their contracts.
    example = load_example("custom_env")
    env = example.GoalGridEnv()
    check_env(env, skip_render_check=True)
    frame, info = env.reset(seed=0)
    assert frame.dtype == np.uint8 and frame.shape == env.observation_space.shape
    messages = example.TASK.build_messages(frame, info)
    image, text = messages[0]["content"]
    assert isinstance(image["image"], Image.Image) and text["text"] == example.PROMPT
    parse = example.TASK.parse_action
    answer = "The goal is left of me... Move: right. No: Move: LEFT"
    assert parse(answer, info) == ParsedAction(2, True, answer.rindex("Move"), "ok")
    for bad in ("I go up", "Move: north", "", None, 3):
        assert parse(bad, info).valid is False
    # Walking to the goal ends the episode with +1.
    (ar, ac), (gr, gc) = info["agent"], info["goal"]
    path = [1 if gr > ar else 0] * abs(gr - ar) + [3 if gc > ac else 2] * abs(gc - ac)
    for action in path:
        _, reward, terminated, truncated, info = env.step(action)
    assert (reward, terminated, truncated, info["is_success"]) == (1.0, True, False, True)


def test_minigrid_example_trains_through_the_generic_adapter(tiny_vlm_path, tmp_path):
    """examples/minigrid.py with its Qwen2.5-VL-3B YAML shrunk to one update: MiniGrid-Empty-5x5 through the adapter
    (rendered frames, mission text, movement actions) with two earlier turns in the prompt; the saved agent rebuilds
    the same env (adapter + history) for evaluation and `play`. Run from another folder: the script, named like the
    `minigrid` package, must not shadow it."""
    from vlm_env_ppo.agent import VLMAgent
    from vlm_env_ppo.envs.adapter import HistoryWrapper, VLMEnvAdapter

    out = tmp_path / "agent"
    stdout = run_example(
        "minigrid.py", "--model_name_or_path", tiny_vlm_path("llava_next"), "--output_dir", str(out), *TINY_FLAGS,
        "--gradient_accumulation_steps", "1", cwd=tmp_path,
    )  # fmt: skip
    assert "vlm-env-ppo: 4 env steps on MiniGrid-Empty-5x5-v0." in stdout
    saved = assert_saved_agent(out, "MiniGrid-Empty-5x5-v0", env_steps=4)
    assert saved["history_length"] == 2 and saved["action_names"][:3] == ["turn left", "turn right", "move forward"]
    env = VLMAgent.from_pretrained(str(out)).env_factory()()
    frame, info = env.reset(seed=0)
    assert isinstance(env, HistoryWrapper) and isinstance(env.env, VLMEnvAdapter)
    assert frame.shape == (160, 160, 3) and info["observation_text"] == "mission: get to the green goal square"


def test_alfworld_example_trains_a_text_model_on_offline_games(tiny_vlm_path, alfworld_data, tmp_path):
    """examples/alfworld.py with RL4VLM's YAML shrunk to one update, on the two hand-written ALFWorld games, with a
    tiny text-only LM (the text engine gives no frames): the games are found through `env_kwargs`, the YAML's
    RL4VLM settings survive (λ, temperature, invalid-action penalty), and the agent is saved."""
    out = tmp_path / "agent"
    stdout = run_example(
        "alfworld.py", "--model_name_or_path", tiny_vlm_path("text"), "--allow_text_only_model", "true",
        "--env_kwargs", json.dumps({"data_dir": str(alfworld_data)}), "--output_dir", str(out), *TINY_FLAGS,
        "--train_vision_tower", "false", cwd=tmp_path,
    )  # fmt: skip
    assert "vlm-env-ppo: 4 env steps on vlm_env_ppo/ALFWorld-v0." in stdout
    assert "Final evaluation (2 episodes, greedy)" in stdout
    saved = assert_saved_agent(out, "vlm_env_ppo/ALFWorld-v0", env_steps=4)
    assert saved["env_kwargs"] == {"data_dir": str(alfworld_data)} and saved["action_names"] == []
    assert saved["temperature"] == 0.2 and saved["cot_logprob_coef"] == 0.2  # RL4VLM's run_alf.sh, from the YAML
    import torch

    args = torch.load(out / "training_args.bin", weights_only=False)  # our own file, written by this run
    assert args.invalid_action_penalty == -1.0 and args.num_ppo_epochs == 4 and args.learning_rate == 1e-5


PAPER = {  # the paper (Zhai et al., NeurIPS 2024) and RL4VLM's launch scripts; see the comments in each YAML
    "learning_rate": 1e-5, "num_ppo_epochs": 4, "cliprange": 0.1, "cliprange_value": 0.1, "vf_coef": 0.5,
    "gamma": 0.9, "lam": 0.95, "temperature": 0.2, "max_new_tokens": 256, "cot_logprob_coef": 0.5,
    "total_env_steps": 15_000, "kl_coef": 0.0, "max_grad_norm": 0.01, "value_head_hidden_sizes": [1024, 512],
    "activation_checkpointing": True, "lr_scheduler_kwargs": {"min_lr": 1e-9}, "mini_batch_size": 128,
    "action_only": False, "invalid_action": "random", "constrained_decoding": False,
}  # fmt: skip
MODELS = {"llava_7b": ("llava-hf/llava-v1.6-mistral-7b-hf", 1), "qwen2_5_vl_3b": ("Qwen/Qwen2.5-VL-3B-Instruct", 4)}


PAPER_CONFIGS = [f"{task}_{model}.yaml" for task in TASK_ENVS for model in MODELS]


@pytest.mark.parametrize("config", sorted({p.name for p in CONFIGS.glob("*.yaml")} | set(PAPER_CONFIGS)))
def test_example_configs_parse_to_the_papers_settings(config):
    """Every YAML parses with `vlm-env-ppo train`'s TrlParser; the gym_cards ones hold the paper's settings."""
    script_args, args, model_args = parse_train_args(["--config", str(CONFIGS / config)])
    assert isinstance(script_args, TrainScriptArguments) and isinstance(args, VLMPPOConfig)
    assert isinstance(model_args, ModelConfig)
    if config == "tiny_cpu.yaml":  # the CPU smoke run: a tiny local model, a few env steps
        assert model_args.model_name_or_path is None and args.total_env_steps <= 64 and args.report_to == []
    if config not in PAPER_CONFIGS:
        return
    task, model = config.removesuffix(".yaml").split("_", 1)
    model_id, micro_batch = MODELS[model]
    assert script_args.env_id == TASK_ENVS[task] and args.output_dir.startswith(f"{task}-")
    assert model_args.model_name_or_path == model_id and model_args.dtype == "bfloat16"
    assert (model_args.use_peft, model_args.lora_r, model_args.lora_alpha) == (True, 128, 256)
    assert model_args.lora_target_modules == "all-linear" and not model_args.load_in_4bit
    assert {k: getattr(args, k) for k in PAPER} == PAPER
    steps_per_update = 1024 if task == "points24" else 512  # the paper's
    assert args.batch_size == steps_per_update and args.num_updates == 15_000 // steps_per_update
    assert args.per_device_train_batch_size == micro_batch and args.gradient_accumulation_steps == 128 // micro_batch
    assert script_args.final_eval_episodes == (1000 if task == "blackjack" else 200)  # RL4VLM's eval-num-per-episode


def test_sokoban_example_runs_the_verl_agent_config_with_the_text_grid(tiny_vlm_path, tmp_path):
    """examples/sokoban.py with no ``--config``: verl-agent's YAML (its rules and temperature come only from there), the
    text-grid task (the room as symbols in the prompt), one PPO update under constrained decoding, the agent saved."""
    out = tmp_path / "agent"
    stdout = run_example(
        "sokoban.py", "--text_grid", "true", "--model_name_or_path", tiny_vlm_path("llava_next"), "--output_dir",
        str(out), *TINY_FLAGS, "--max_new_tokens", "40", cwd=tmp_path,
    )  # fmt: skip
    assert "vlm-env-ppo: 4 env steps on vlm_env_ppo/Sokoban-v0." in stdout
    saved = json.loads((out / "vlm_env_ppo.json").read_text())
    assert saved["env_kwargs"] == {"rules": "verl-agent"} and saved["temperature"] == 1.0  # YAML
    assert saved["constrained_decoding"] and saved["max_new_tokens"] == 40  # YAML, flags
    assert saved["last_eval"]["eval/invalid_action_rate"] == 0.0, "constrained decoding: every answer legal"
