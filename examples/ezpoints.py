"""EZPoints with PPO, as in the paper: LLaVA-1.6-Mistral-7B with LoRA, 15k env steps, one GPU.

    python examples/ezpoints.py                                               # the paper's settings (one GPU)
    python examples/ezpoints.py --model_name_or_path path/to/your/sft-model    # the paper starts PPO from SFT
    python examples/ezpoints.py --config examples/configs/ezpoints_qwen2_5_vl_3b.yaml       # Qwen2.5-VL-3B
    python examples/ezpoints.py --config examples/configs/tiny_cpu.yaml       # tiny VLM built locally, CPU, ~10 s

Without ``--config`` the script reads ``examples/configs/ezpoints_llava_7b.yaml`` (the paper's values, each with its
source); flags of ``vlm-env-ppo train --help`` override them. The trained agent is saved to ``output_dir``.

The game (`vlm_env_ppo.envs.EZPointsEnv`): two cards on a green table; type a formula that makes 12 from both cards
(J, Q, K count 10), one token per step: a number 1-10, "+", "*", or "=" to submit. A number not on a card costs -1;
"=" gives +10 if the formula equals 12 and uses both cards, else -1, and ends the episode; a formula longer than 5
tokens ends it with -1. The frame shows "Formula: ..." and the prompt repeats it (``Task.info_text``), as in the paper.
Success = the +10. Every deal has a solution and the expert of `vlm_env_ppo.sft` solves them all; the paper's
LLaVA-7B reached 50.0% after SFT then RL (GPT-4V 10.5%, no-CoT 29.9%); Qwen2.5-VL-3B with GiGPO reached 100%.

The YAMLs set ``rules: rl4vlm``: RL4VLM's own formula semantics (``1`` then ``2`` is 12, ``*`` ``*`` a power, the
cap checked one step late, the prompt's formula without spaces), so that success rates compare with the paper's;
drop it for our exact rules (README, "Differences from RL4VLM's environments").

What to edit: the prompt (``TASK``), the env's arguments (``env_kwargs`` in the YAML: ``target``,
``treat_face_cards_as_10``, ``max_formula_length``, ``rules``), the hyperparameters (the YAML, or flags).
"""

from __future__ import annotations

from pathlib import Path

from vlm_env_ppo.cli import build_trainer, parse_train_args, run_training
from vlm_env_ppo.tasks import EZ_POINTS, register_task

CONFIG = Path(__file__).parent / "configs" / "ezpoints_llava_7b.yaml"

# The prompt: this description, the formula typed so far (`info_text`), the 13 legal actions and the JSON answer
# format; `print(TASK.prompt({"formula_text": "2+"}))` shows it. Change it with
#     TASK = register_task(dataclasses.replace(EZ_POINTS, description="...", thoughts_hint="..."))
# (an SFT model should have been trained on the same prompt).
TASK = register_task(EZ_POINTS)


def main(argv: list[str] | None = None) -> dict:
    script_args, args, model_args = parse_train_args(  # `vlm-env-ppo train`'s TrlParser: YAML first, then flags
        argv, CONFIG, defaults={"env_id": TASK.env_id, "output_dir": "ezpoints-ppo"}
    )
    return run_training(build_trainer(script_args, args, model_args), script_args)


if __name__ == "__main__":
    main()
