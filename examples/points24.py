"""Points24 (the 24 game) with PPO, as in the paper: LLaVA-1.6-Mistral-7B with LoRA, 15k env steps, one GPU.

    python examples/points24.py                                               # the paper's settings (one GPU)
    python examples/points24.py --model_name_or_path path/to/your/sft-model    # the paper starts PPO from SFT
    python examples/points24.py --config examples/configs/points24_qwen2_5_vl_3b.yaml       # Qwen2.5-VL-3B
    python examples/points24.py --config examples/configs/tiny_cpu.yaml       # tiny VLM built locally, CPU, ~10 s

Without ``--config`` the script reads ``examples/configs/points24_llava_7b.yaml`` (the paper's values, each with its
source: 1,024 env steps per update here, 512 for the other tasks); flags of ``vlm-env-ppo train --help`` override
them. The trained agent is saved to ``output_dir``.

The game (`vlm_env_ppo.envs.Points24Env`): four cards (A = 1, J/Q/K = 10); type a formula that makes 24 using each
card once, one token per step: a number 1-10, "+ - * / ( )", or "=" to submit (+10 if it equals 24, else -1). The
formula is capped at 20 tokens. Success = the +10. The hardest task of the paper: its LLaVA-7B reached 2.3% (GPT-4V
and no-CoT 0%). The YAMLs set ``rules: rl4vlm``, RL4VLM's own formula semantics (digits typed side by side are one
number, ``*`` ``*`` a power, ``/`` ``/`` floor division, float arithmetic, the prompt's formula without spaces), so
that success rates compare with the paper's; drop it for our exact rules (README, "Differences from RL4VLM's
environments"). Card ranks are dealt independently, so some deals have no solution at all (14% under ``rl4vlm``,
27% under ``exact``); the script prints the share of the final evaluation's deals that have one under the chosen
rules, the ceiling of its success rate.

What to edit: the prompt (``TASK``), the env's arguments (``env_kwargs`` in the YAML: ``target``,
``treat_face_cards_as_10``, ``max_formula_length``, ``rules``), the hyperparameters (the YAML, or flags).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym

from vlm_env_ppo.cli import build_trainer, parse_train_args, run_training
from vlm_env_ppo.tasks import POINTS_24, register_task

CONFIG = Path(__file__).parent / "configs" / "points24_llava_7b.yaml"

# The prompt: this description, the formula typed so far, the 17 legal actions and the JSON answer format;
# `print(TASK.prompt({"formula_text": "(10-4)*"}))` shows it. Change it with
#     TASK = register_task(dataclasses.replace(POINTS_24, description="...", thoughts_hint="..."))
TASK = register_task(POINTS_24)


def solvable_fraction(env_kwargs: dict | None, num_deals: int, seed: int) -> float:
    """Share of the deals on seeds ``seed, ..., seed + num_deals - 1`` (those of the final evaluation) that can make
    the target: the best success rate any agent can reach on them (``info["solvable"]``, from an exact solver, under
    the env's ``rules``)."""
    env = gym.make(TASK.env_id, **(env_kwargs or {}))
    return sum(env.reset(seed=seed + k)[1]["solvable"] for k in range(num_deals)) / num_deals


def main(argv: list[str] | None = None) -> dict:
    # The parser of `vlm-env-ppo train`: TrlParser((TrainScriptArguments, VLMPPOConfig, ModelConfig)). YAML, then flags.
    script_args, args, model_args = parse_train_args(
        argv, CONFIG, defaults={"env_id": TASK.env_id, "output_dir": "points24-ppo"}
    )
    metrics = run_training(build_trainer(script_args, args, model_args), script_args)
    if script_args.final_eval_episodes and script_args.env_id == TASK.env_id:
        n = script_args.final_eval_episodes
        ceiling = solvable_fraction(args.env_kwargs, n, args.eval_seed)
        print(f"Points24: {ceiling:.0%} of the {n} evaluation deals have a solution (the success rate's ceiling).")
    return metrics


if __name__ == "__main__":
    main()
