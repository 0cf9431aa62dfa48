"""Stage 1 of the paper's pipeline: an SFT warm start with TRL on expert demonstrations, and its command line.

RL4VLM (Zhai et al., NeurIPS 2024) fine-tunes the VLM on instruction-following data (frames with JSON answers whose
reasoning and action are correct) before PPO: RL from a raw model rarely produces a parsable action at all
(its finding). That data is generated from the envs' experts by `vlm_env_ppo.demonstrations`
(`generate_sft_dataset`, re-exported here); then ``run_sft(model, ds, default_sft_config("nl-sft"))`` fine-tunes with
TRL's `SFTTrainer` (LoRA by default), merges the adapter and saves a full model + processor, and
``VLMPPOTrainer("nl-sft", ...)`` starts PPO from it. `evaluate_policy` measures valid-action and success rates before
and after; ``vlm-env-ppo sft`` (`sft_main`) does it all from the command line, and ``examples/sft_then_ppo.py`` is the
recipe to copy, with hyperparameters for a 7B model.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

# Re-exported: the data generation lived here before it got a module of its own
# (`vlm_env_ppo.sft.generate_sft_dataset` and the other names keep working).
from .demonstrations import (  # noqa: F401
    EXPERTS,
    ExpertFn,
    _join,
    _png,
    blackjack_expert,
    color_choice_expert,
    expert_action_accuracy,
    expert_steps,
    generate_sft_dataset,
    get_expert,
    number_line_expert,
    points_expert,
    prompt_and_images,
    register_expert,
    sft_features,
)
from .saved_agent import SFT_CONFIG
from .tasks import Task, get_task
from .user_code import task_record

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- training
def default_lora_config(r: int = 16, lora_alpha: int = 32, target_modules="all-linear", **kwargs):
    """The default LoRA of `run_sft`: all linear layers (the paper's choice; paper r=128, alpha=256 on 7B)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules, task_type="CAUSAL_LM", **kwargs)


# Where our SFT defaults differ from `trl.SFTConfig`'s. ``max_length=None``: TRL's 1024 would cut into the image
# tokens of a 300×300 frame on LLaVA-1.6 (several thousand tokens), which fails ("Image features and image tokens do
# not match"); our prompts are one frame and a short text, so nothing needs truncating.
_SFT_DEFAULTS = {"max_length": None, "report_to": "none"}


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def default_sft_config(output_dir: str, **overrides):
    """`trl.SFTConfig` with defaults that suit generated VLM data: no truncation (``max_length=None``), bf16 only on
    a GPU that supports it (TRL's default ``bf16=True`` fails on a CPU), no reporting. ``overrides`` win."""
    from trl import SFTConfig

    kwargs = dict(output_dir=output_dir, **_SFT_DEFAULTS, bf16=_bf16_supported())
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


_DEFAULT_LORA = "default"


def run_sft(
    model,
    train_dataset,
    args=None,
    *,
    peft_config=_DEFAULT_LORA,
    processing_class=None,
    env_id: str | None = None,
    action_only: bool | None = None,
    resume_from_checkpoint: str | bool | None = None,
    task: Task | None = None,
) -> str:
    """Fine-tune ``model`` on ``train_dataset`` (from `generate_sft_dataset`) with TRL's `SFTTrainer`, then save a
    full model + processor into ``args.output_dir`` and return that path.

    Args:
        model: a Hub id, a local path or a loaded VLM (`AutoModelForImageTextToText`).
        train_dataset: prompt-completion rows with an ``images`` column (`generate_sft_dataset`, possibly
            concatenated over envs or loaded with `datasets.load_from_disk`).
        args: a `trl.SFTConfig`; defaults to `default_sft_config` with ``output_dir="sft-output"``. Its
            ``model_init_kwargs`` apply when ``model`` is a path.
        peft_config: a `peft.PeftConfig`; ``"default"`` is `default_lora_config()` (LoRA r=16 on all linear
            layers). ``None`` fine-tunes all weights.
        processing_class: the model's processor; loaded from the model when None.
        env_id, action_only: recorded in ``vlm_env_ppo_sft.json`` next to the model; read from the dataset's
            ``env_id`` / ``action_only`` columns when None (``env_id`` only when the dataset has a single env).
        resume_from_checkpoint: passed to ``SFTTrainer.train`` (a ``checkpoint-N`` folder of ``output_dir``, or
            True for the last one) when ``args.save_strategy`` wrote checkpoints.
        task: the env's `Task` (your own prompt/parser subclass, as the data was made with); recorded with the
            model so that `VLMAgent.from_pretrained` acts with it. Default: the registered task of ``env_id``.

    Why merge: the LoRA adapter is merged into the base weights and the folder holds an ordinary full model, so
    ``VLMPPOTrainer(output_dir, ...)`` (or ``vlm-env-ppo train --model_name_or_path output_dir``) loads it like any
    model path, a fresh PPO LoRA goes on top of it, and PPO's adapter-disabled KL reference is then the SFT policy,
    not the raw base model. A 4-bit (QLoRA) base cannot take merged weights: the base is reloaded unquantized in
    ``model_init_kwargs["dtype"]`` (default bfloat16) and the adapter merged into it.
    """
    import torch
    from trl import SFTTrainer

    from . import models as _models  # noqa: F401  (lets tiny Qwen2.5-VL processors load without torchvision)

    args = args if args is not None else default_sft_config("sft-output")
    if isinstance(peft_config, str) and peft_config == _DEFAULT_LORA:
        peft_config = default_lora_config()
    columns = set(train_dataset.column_names)
    if not {"prompt", "completion", "images"} <= columns:
        raise ValueError(
            f"`train_dataset` needs `prompt`, `completion` and `images` columns (see `generate_sft_dataset`); it has "
            f"{sorted(columns)}."
        )
    if env_id is None and "env_id" in columns:
        ids = set(train_dataset.unique("env_id"))
        env_id = ids.pop() if len(ids) == 1 else None
    if action_only is None and "action_only" in columns:
        flags = set(train_dataset.unique("action_only"))
        action_only = flags.pop() if len(flags) == 1 else None

    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_dataset, processing_class=processing_class, peft_config=peft_config
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)

    output_dir = args.output_dir
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        trained = trainer.accelerator.unwrap_model(trainer.model)
        merged = _merge_adapter(trained, args.model_init_kwargs or {})
        base_model = getattr(merged.config, "_name_or_path", None)
        merged.save_pretrained(output_dir, safe_serialization=True)
        trainer.processing_class.save_pretrained(output_dir)
        trainer.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
        config = {
            "stage": "sft",
            "env_id": env_id,
            "base_model": base_model,
            "lora": peft_config is not None,
            "action_only": action_only,
            "sft_examples": len(train_dataset),
            "sft_train_loss": next((h["train_loss"] for h in trainer.state.log_history if "train_loss" in h), None),
        }
        if task is None and env_id is not None:
            try:
                task = get_task(env_id)
            except KeyError:
                pass
        if task is not None:  # what `VLMAgent.from_pretrained` acts with (a user's task: `vlm_env_ppo.user_code`)
            config["action_names"] = list(task.action_names or ())
            config["task"] = task_record(task)
        with open(os.path.join(output_dir, SFT_CONFIG), "w") as f:
            json.dump(config, f, indent=2)
    trainer.accelerator.wait_for_everyone()
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return output_dir


def _merge_adapter(model, model_init_kwargs: dict):
    """A plain model with the LoRA merged in (the model itself when it has no adapter)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return model.merge_and_unload()
    import tempfile

    import torch
    from transformers import AutoModelForImageTextToText

    base_path = model.peft_config[model.active_adapter].base_model_name_or_path
    dtype = model_init_kwargs.get("dtype", torch.bfloat16)
    logger.info("Merging the adapter into an unquantized copy of %s (%s).", base_path, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=dtype)
        return PeftModel.from_pretrained(base, tmp).merge_and_unload()


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_policy(
    model,
    env_id: str,
    num_episodes: int = 32,
    seed: int = 1_000_000,
    *,
    processing_class=None,
    action_only: bool = False,
    greedy: bool = True,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    task: Task | None = None,
    env_kwargs: dict | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Valid-action and success rates of ``model`` (a path or a loaded VLM) on fresh episodes of ``env_id``.

    Plays episode ``k`` on seed ``seed + k`` with the evaluation harness (`vlm_env_ppo.agent.evaluate_episodes`
    through `VLMAgent`: the trainer's prompts, `build_model_inputs` and generation; an invalid output plays a random
    legal action, as in training). The default ``seed`` is `VLMPPOConfig.eval_seed`'s, so SFT and PPO evaluations play the same episodes.
    ``max_new_tokens`` must fit the longest answer (the paper's 256 does). A path is loaded (safetensors only) in its
    saved dtype onto ``device`` (default: CUDA when available). Returns ``{"valid_action_rate", "success_rate",
    "episode_return", "episode_length", "episodes"}`` and, for envs with an expert, `expert_action_accuracy`'s
    ``expert_action_accuracy`` and ``majority_action_accuracy`` (the expert's states of the same seeds).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from . import models as _models  # noqa: F401
    from .agent import VLMAgent

    if isinstance(model, str):
        policy = AutoModelForImageTextToText.from_pretrained(model, dtype="auto", use_safetensors=True)
        processing_class = processing_class or AutoProcessor.from_pretrained(model)
        policy.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        policy = model
        if processing_class is None:
            raise ValueError("Pass `processing_class=` with a loaded model.")
    task = task if task is not None else get_task(env_id)
    config = {"env_id": env_id, "action_only": action_only, "max_new_tokens": max_new_tokens}
    agent = VLMAgent(policy, processing_class, None, task, config)
    result = agent.evaluate(
        env_id, num_episodes=num_episodes, seed=seed, greedy=greedy, batch_size=batch_size, **(env_kwargs or {})
    )
    accuracy = {}
    if env_id in EXPERTS:
        accuracy = expert_action_accuracy(agent, env_id, num_episodes, seed, batch_size, env_kwargs)
    return {
        "valid_action_rate": 1.0 - result.invalid_action_rate,
        "success_rate": result.success_rate,
        "episode_return": result.mean_return,
        "episode_length": result.mean_episode_length,
        "episodes": result.num_episodes,
        **accuracy,
    }


# ---------------------------------------------------------------------------------------------------- command line
SFT_QUICKSTART_CONFIG = "sft_quickstart.yaml"  # in vlm_env_ppo/configs


@dataclass
class SFTScriptArguments:
    """Arguments of ``vlm-env-ppo sft`` that are not `trl.SFTConfig` or `trl.ModelConfig` fields."""

    env_id: str = field(default="gym_cards/NumberLine-v0", metadata={"help": "Env to generate expert data from."})
    num_episodes: int = field(default=1000, metadata={"help": "Expert episodes to generate (one row per step)."})
    dataset_seed: int = field(default=0, metadata={"help": "Episode k of the generated data is reset with seed + k."})
    action_only: bool = field(default=False, metadata={"help": "Action-only answers (the no-CoT prompt)."})
    random_action_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of playing a random action instead of the expert's while "
            "generating (off-path states; the target stays the expert's)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Train on this saved dataset (a `save_to_disk` folder or a Hub dataset id) "
            "instead of generating one."
        },
    )
    dataset_dir: str | None = field(default=None, metadata={"help": "Save the generated dataset here."})
    push_dataset_to_hub: str | None = field(default=None, metadata={"help": "Push the dataset to this Hub repo id."})
    tiny_family: str = field(
        default="llava_next", metadata={"help": "Tiny VLM family built locally when no `--model_name_or_path`."}
    )
    full_finetune: bool = field(default=False, metadata={"help": "Train all weights instead of a LoRA adapter."})
    eval_episodes: int = field(
        default=32, metadata={"help": "Evaluate before and after SFT on this many episodes (0 skips)."}
    )
    eval_seed: int = field(
        default=1_000_000,
        metadata={"help": "Evaluation episode k is reset with seed + k (as `VLMPPOConfig.eval_seed`)."},
    )
    eval_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Generation budget per evaluation step; default: the longest target answer + 16 tokens."},
    )


def ppo_command(model_args, sft_dir: str, env_id: str, action_only: bool) -> str:
    """The ``vlm-env-ppo train`` command that continues from an SFT folder (printed by ``vlm-env-ppo sft``).

    For the tiny quickstart: the PPO quickstart config without its format warm start (the SFT model already answers
    in format; a warm start on random actions would undo the SFT). For a real model: the paper's LoRA; the other
    `VLMPPOConfig` defaults are the paper's (temperature 0.2, 256 new tokens, ...).
    """
    variant = f"--action_only {'true' if action_only else 'false'}"
    if model_args.model_name_or_path is None:
        from importlib import resources

        config = resources.files("vlm_env_ppo") / "configs" / "quickstart.yaml"
        return (
            f"vlm-env-ppo train --config {config} --model_name_or_path {sft_dir} --env_id {env_id} {variant} "
            f"--warm_start_steps 0 --temperature 0.2 --max_new_tokens 96 --learning_rate 1e-4 --output_dir {sft_dir}-ppo"
        )
    return (
        f"vlm-env-ppo train --model_name_or_path {sft_dir} --env_id {env_id} {variant} --use_peft --lora_r 128 "
        f"--lora_alpha 256 --lora_target_modules all-linear --output_dir {sft_dir}-ppo"
    )


def longest_answer_tokens(model: str, dataset, revision: str | None = None) -> int:
    """Tokens (with EOS) of the longest target answer of ``dataset`` under ``model``'s tokenizer."""
    from transformers import AutoProcessor

    from . import models as _models  # noqa: F401

    tokenizer = getattr(AutoProcessor.from_pretrained(model, revision=revision), "tokenizer", None)
    texts = [completion[0]["content"][0]["text"] for completion in dataset["completion"]]
    return max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts) + 1


def sft_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig), prog="vlm-env-ppo sft")
    parser.set_defaults(**_SFT_DEFAULTS, bf16=_bf16_supported())  # a YAML --config and flags still override them
    return parser


def sft_main(argv: list[str]) -> dict:
    """``vlm-env-ppo sft``: generate (or load) expert data, evaluate, fine-tune with `run_sft`, evaluate again.

    With no ``--model_name_or_path`` and no ``--config`` it runs the embedded quickstart
    (``configs/sft_quickstart.yaml``): a tiny VLM built locally learns ColorChoice from expert data on a CPU.
    Returns ``{"output_dir", "examples", "before", "after"}`` (the evaluation dicts of `evaluate_policy`).
    """
    from importlib import resources

    from datasets import load_dataset, load_from_disk
    from trl import get_peft_config

    from .models.loading import model_init_kwargs
    from .models.tiny import build_tiny_vlm

    argv = list(argv)
    if not any(a == "--config" or a.startswith(("--config=", "--model_name_or_path")) for a in argv):
        argv = ["--config", str(resources.files("vlm_env_ppo") / "configs" / SFT_QUICKSTART_CONFIG), *argv]
    try:
        script_args, args, model_args = sft_parser().parse_args_and_config(argv)
    except (ValueError, TypeError) as error:  # a flag value the config rejects: its message says what to change
        print(f"vlm-env-ppo sft: error: {error}", file=sys.stderr)  # as argparse does: status 2, no traceback
        sys.exit(2)

    # 1. Data: generated with the env's expert, or a saved dataset.
    if script_args.dataset_name:
        name = script_args.dataset_name
        dataset = load_from_disk(name) if os.path.isdir(name) else load_dataset(name, split="train")
    else:
        dataset = generate_sft_dataset(
            script_args.env_id,
            script_args.num_episodes,
            script_args.dataset_seed,
            action_only=script_args.action_only,
            random_action_prob=script_args.random_action_prob,
        )
    if script_args.dataset_dir:
        dataset.save_to_disk(script_args.dataset_dir)
    if script_args.push_dataset_to_hub:
        dataset.push_to_hub(script_args.push_dataset_to_hub)
    env_ids = set(dataset.unique("env_id")) if "env_id" in dataset.column_names else {script_args.env_id}
    env_id = env_ids.pop() if len(env_ids) == 1 else script_args.env_id
    flags = set(dataset.unique("action_only")) if "action_only" in dataset.column_names else set()
    action_only = flags.pop() if len(flags) == 1 else script_args.action_only

    # 2. Model and LoRA, from the `trl.ModelConfig` flags (as TRL's own `sft` script).
    model = model_args.model_name_or_path or build_tiny_vlm(
        script_args.tiny_family, os.path.join(args.output_dir, "tiny-base-model"), seed=args.seed
    )
    args.model_init_kwargs = model_init_kwargs(model_args, args.model_init_kwargs)
    peft_config = None
    if not script_args.full_finetune:
        model_args.use_peft = True
        model_args.lora_target_modules = model_args.lora_target_modules or "all-linear"
        peft_config = get_peft_config(model_args)

    # 3. Evaluate, fine-tune, evaluate.
    max_new_tokens = script_args.eval_max_new_tokens
    if script_args.eval_episodes and max_new_tokens is None:
        max_new_tokens = longest_answer_tokens(model, dataset, model_args.model_revision) + 16

    def evaluate(path):
        if not script_args.eval_episodes or args.process_index != 0:  # with several processes, only the first
            return None
        return evaluate_policy(
            path,
            env_id,
            script_args.eval_episodes,
            script_args.eval_seed,
            action_only=action_only,
            max_new_tokens=max_new_tokens,
        )

    before = evaluate(model)
    output_dir = run_sft(model, dataset, args, peft_config=peft_config, env_id=env_id, action_only=action_only)
    after = evaluate(output_dir)

    summary = f"\nvlm-env-ppo sft: {len(dataset)} expert steps on {env_id}."
    if before and after:
        summary += (
            f" Greedy evaluation on {script_args.eval_episodes} episodes: valid-action rate "
            f"{before['valid_action_rate']:.2f} -> {after['valid_action_rate']:.2f}, success rate "
            f"{before['success_rate']:.2f} -> {after['success_rate']:.2f}."
        )
        if "expert_action_accuracy" in after:
            summary += (
                f" Action accuracy against the expert on its own states: {before['expert_action_accuracy']:.2f} -> "
                f"{after['expert_action_accuracy']:.2f} (always the most common action: "
                f"{after['majority_action_accuracy']:.2f})."
            )
    print(
        f"{summary} Model saved to {output_dir}. Continue with PPO:\n  {ppo_command(model_args, output_dir, env_id, action_only)}"
    )
    return {"output_dir": output_dir, "examples": len(dataset), "before": before, "after": after}
