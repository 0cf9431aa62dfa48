"""Blackjack with PPO, as in the paper: LLaVA-1.6-Mistral-7B with LoRA, 15k env steps, one GPU.

    python examples/blackjack.py                                              # the paper's settings (one GPU)
    python examples/blackjack.py --model_name_or_path path/to/your/sft-model   # the paper starts PPO from SFT
    python examples/blackjack.py --config examples/configs/blackjack_qwen2_5_vl_3b.yaml     # Qwen2.5-VL-3B
    python examples/blackjack.py --config examples/configs/tiny_cpu.yaml      # tiny VLM built locally, CPU, ~10 s

Without ``--config`` the script reads ``examples/configs/blackjack_llava_7b.yaml`` (the paper's values, each with its
source); flags of ``vlm-env-ppo train --help`` override them. The trained agent is saved to ``output_dir``.

The game (`vlm_env_ppo.envs.BlackjackEnv`): gymnasium's Blackjack rules drawn as cards: the dealer's face-up card and
the player's cards; actions "stand" and "hit". +1 for a win, -1 for a loss, 0 for a draw. Success = a win, so even a
perfect player loses often: basic strategy wins about 43% of hands. The paper's LLaVA-7B reached 40.2% after SFT then
RL (GPT-4V 25.5%, no-CoT 40.4%). Episodes are short (about 1.5 steps), hence the larger final evaluation (1,000
hands) in the YAML; the script prints basic strategy's win rate on the same hands to compare with.

What to edit: the prompt (``TASK``), the rules (``env_kwargs`` in the YAML: ``natural``, ``sab``), the
hyperparameters (the YAML, or flags).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym

from vlm_env_ppo.actions import ParsedAction
from vlm_env_ppo.agent import evaluate_episodes
from vlm_env_ppo.cli import build_trainer, parse_train_args, run_training
from vlm_env_ppo.envs.solvers import blackjack_basic_strategy
from vlm_env_ppo.tasks import BLACKJACK, register_task

CONFIG = Path(__file__).parent / "configs" / "blackjack_llava_7b.yaml"

# The prompt: this description, the legal actions ["stand", "hit"] and the JSON answer format; `print(TASK.prompt())`
# shows it. Change it with `TASK = register_task(dataclasses.replace(BLACKJACK, description="..."))`.
TASK = register_task(BLACKJACK)


def basic_strategy_win_rate(env_kwargs: dict | None, num_hands: int, seed: int) -> float:
    """Win rate of basic strategy (`blackjack_basic_strategy`) on the hands that the final evaluation plays (episode
    ``k`` reset with ``seed + k``, the same evaluation loop as `VLMPPOTrainer.evaluate`)."""
    result = evaluate_episodes(
        lambda observations, infos: [ParsedAction(blackjack_basic_strategy(info), True, None) for info in infos],
        lambda: gym.make(TASK.env_id, **(env_kwargs or {})),
        num_hands,
        seed,
    )
    return result.success_rate


def main(argv: list[str] | None = None) -> dict:
    # The parser of `vlm-env-ppo train`: TrlParser((TrainScriptArguments, VLMPPOConfig, ModelConfig)). YAML, then flags.
    script_args, args, model_args = parse_train_args(
        argv, CONFIG, defaults={"env_id": TASK.env_id, "output_dir": "blackjack-ppo"}
    )
    trainer = build_trainer(script_args, args, model_args)
    metrics = run_training(trainer, script_args)
    final_eval = getattr(trainer, "last_eval", None)  # set by the final evaluation (final_eval_episodes > 0)
    if final_eval and final_eval["eval/update"] == trainer.state.global_step and script_args.env_id == TASK.env_id:
        baseline = basic_strategy_win_rate(args.env_kwargs, final_eval["eval/episodes"], args.eval_seed)
        print(
            f"Blackjack: the agent won {final_eval['eval/success_rate']:.1%} of the evaluation hands, basic "
            f"strategy {baseline:.1%} of the same hands."
        )
    return metrics


if __name__ == "__main__":
    main()
