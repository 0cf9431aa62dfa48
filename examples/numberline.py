"""NumberLine with PPO, as in the paper: LLaVA-1.6-Mistral-7B with LoRA, 15k env steps, one GPU.

    python examples/numberline.py                                             # the paper's settings (one GPU)
    python examples/numberline.py --model_name_or_path path/to/your/sft-model  # the paper starts PPO from SFT
    python examples/numberline.py --config examples/configs/numberline_qwen2_5_vl_3b.yaml   # Qwen2.5-VL-3B
    python examples/numberline.py --config examples/configs/tiny_cpu.yaml     # tiny VLM built locally, CPU, ~10 s

With no ``--config`` the script reads ``examples/configs/numberline_llava_7b.yaml``: every value there is the paper's,
with its source. Any flag of ``vlm-env-ppo train --help`` overrides it (``--learning_rate 2e-5``, ``--output_dir
runs/nl``, ``--report_to wandb``, ``--resume_from_checkpoint true``). At the end the agent (LoRA adapter, value head,
processor, model card with the final evaluation) is in ``output_dir``: ``vlm-env-ppo eval``/``play`` it, or push it.

The game (`vlm_env_ppo.envs.NumberLineEnv`): the frame shows "Target: t" and "Current: c", integers in [0, 5]; the
actions "-" and "+" move the current number by one. +1 and the episode ends when current == target, -1 for a step
that does not get closer, truncated after 10 steps. Success (``env/success_rate``) = reaching the target. The exact
policy (`vlm_env_ppo.envs.solvers.number_line_oracle`) succeeds on every episode; the paper's LLaVA-7B reached 89.4%
after SFT then RL (GPT-4V 65.5%, no-CoT 26.9%); Qwen2.5-VL-3B with GiGPO reached 100%.

What to edit: the prompt below (``TASK``), the env's arguments (``env_kwargs`` in the YAML: ``max_position``,
``frame_size``), and the hyperparameters (the YAML, or flags).
"""

from __future__ import annotations

from pathlib import Path

from vlm_env_ppo.cli import build_trainer, parse_train_args, run_training
from vlm_env_ppo.tasks import NUMBER_LINE, register_task

CONFIG = Path(__file__).parent / "configs" / "numberline_llava_7b.yaml"

# What the model reads each step: this description, the legal actions ["-", "+"] and the JSON answer format
# ({"thoughts": ..., "action": ...}); `print(TASK.prompt())` shows it. To change it, e.g.
#     TASK = register_task(dataclasses.replace(NUMBER_LINE, description="...", thoughts_hint="..."))
# Registered tasks are what the trainer (and `vlm_env_ppo.sft`) use for the env id. Start PPO from an SFT model trained
# on the same prompt.
TASK = register_task(NUMBER_LINE)


def main(argv: list[str] | None = None) -> dict:
    # The parser of `vlm-env-ppo train`: TrlParser((TrainScriptArguments, VLMPPOConfig, ModelConfig)). YAML, then flags.
    script_args, args, model_args = parse_train_args(
        argv, CONFIG, defaults={"env_id": TASK.env_id, "output_dir": "numberline-ppo"}
    )
    trainer = build_trainer(script_args, args, model_args)  # e.g. trainer_cls=YourTrainer to override hooks
    return run_training(trainer, script_args)  # train, evaluate, save, print a summary


if __name__ == "__main__":
    main()
