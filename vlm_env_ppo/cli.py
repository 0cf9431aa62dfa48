"""`vlm-env-ppo` command line: ``vlm-env-ppo train [--config file.yaml] [--flag value ...]``.

With no ``--model_name_or_path`` (and no ``--config``), ``train`` runs the embedded quickstart
(`configs/quickstart.yaml`): a tiny VLM built locally learns a visual task on the CPU, no downloads.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources

QUICKSTART_CONFIG = resources.files("vlm_env_ppo") / "configs" / "quickstart.yaml"


@dataclass
class TrainScriptArguments:
    """Arguments of ``vlm-env-ppo train`` that are not `VLMPPOConfig` or `trl.ModelConfig` fields."""

    env_id: str = field(
        default="gym_cards/NumberLine-v0", metadata={"help": "Registered gymnasium env id to train on."}
    )
    tiny_family: str = field(
        default="llava_next",
        metadata={"help": "Family of the tiny VLM built locally when no `--model_name_or_path` is given."},
    )
    warm_start_steps: int = field(
        default=0,
        metadata={
            "help": "Supervised steps that teach the answer format (random actions, so not the task) before PPO. "
            "For untrained/tiny models only; real runs start from an SFT checkpoint instead."
        },
    )


def _parser():
    from trl import ModelConfig, TrlParser

    from .config import VLMPPOConfig

    return TrlParser((TrainScriptArguments, VLMPPOConfig, ModelConfig), prog="vlm-env-ppo train")


def train(argv: list[str]) -> dict:
    """Parse ``argv``, train, save the final agent, print a summary; returns the last logged metrics."""
    from trl import get_peft_config, get_quantization_config

    from .models.tiny import build_tiny_vlm
    from .trainer import VLMPPOTrainer
    from .warm_start import teach_answer_format

    argv = list(argv)
    if "--model_name_or_path" not in argv and "--config" not in argv and not any(
        a.startswith("--model_name_or_path=") for a in argv
    ):
        argv = ["--config", str(QUICKSTART_CONFIG), *argv]
    script_args, args, model_args = _parser().parse_args_and_config(argv)

    model = model_args.model_name_or_path
    if model is None:
        model = os.path.join(args.output_dir, "tiny-base-model")
        if not os.path.isfile(os.path.join(model, "config.json")):  # a resumed quickstart keeps its base model
            build_tiny_vlm(script_args.tiny_family, model, seed=args.seed)
    init_kwargs = dict(args.model_init_kwargs or {})
    init_kwargs.setdefault("revision", model_args.model_revision)
    if model_args.dtype not in (None, "auto"):
        init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation is not None:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        init_kwargs["quantization_config"] = quantization_config
    args.model_init_kwargs = init_kwargs

    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    trainer = VLMPPOTrainer(model, args, env=script_args.env_id, peft_config=get_peft_config(model_args))
    if script_args.warm_start_steps and not resume:
        teach_answer_format(trainer, steps=script_args.warm_start_steps, seed=args.seed)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    history = [h for h in trainer.state.log_history if "env/success_rate" in h]
    first, last = history[0], history[-1]
    print(
        f"\nvlm-env-ppo: {trainer.env_steps} env steps on {script_args.env_id}. success rate "
        f"{first['env/success_rate']:.2f} -> {last['env/success_rate']:.2f}, episode return "
        f"{first['env/episode_return']:.2f} -> {last['env/episode_return']:.2f}, invalid outputs "
        f"{first['env/invalid_action_rate']:.2f} -> {last['env/invalid_action_rate']:.2f}. Agent saved to "
        f"{args.output_dir}"
    )
    return last


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = "usage: vlm-env-ppo train [--config file.yaml] [--flag value ...]   (vlm-env-ppo train --help)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        train(rest)
    else:
        sys.exit(f"Unknown command {command!r}. {usage}")


if __name__ == "__main__":
    main()
