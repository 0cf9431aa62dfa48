"""Sokoban (or FrozenLake) with PPO in a published setting: Qwen2.5-VL-3B, one config file per system.

    python examples/sokoban.py                                                            # verl-agent's setting
    python examples/sokoban.py --config examples/configs/sokoban_qwen2_5_vl_3b_vagen.yaml  # VAGEN's setting
    python examples/sokoban.py --env_id vlm_env_ppo/FrozenLake-v0 \\
        --config examples/configs/frozenlake_qwen2_5_vl_3b_vagen.yaml                     # FrozenLake, VAGEN's
    python examples/sokoban.py --config examples/configs/tiny_cpu.yaml                    # tiny VLM, CPU, seconds
    python examples/sokoban.py --text_grid true ...                                       # the room as text, too

With no ``--config`` the script reads ``examples/configs/sokoban_qwen2_5_vl_3b_verl_agent.yaml``: verl-agent's
Sokoban 6x6 setting (one box, generator depth 30, 15 steps, the native reward), each value with the file it comes
from. ``env_kwargs: {rules: ...}`` selects another system's rules (`vlm_env_ppo.envs.sokoban.RULES`:
``verl-agent``, ``vagen``, ``ragen``, ``native``, ``success-only``; FrozenLake: ``vagen``, ``ragen``, ``roll``,
``gymnasium``). Any flag of ``vlm-env-ppo train --help`` overrides the YAML.

The game (`vlm_env_ppo.envs.SokobanEnv`): a new random room every episode, generated as every published system does
(reverse play from the solved room), so each level is solvable; the exact solver (`sokoban_levels.solve`) is the
expert of ``vlm-env-ppo sft --env_id vlm_env_ppo/Sokoban-v0`` (the SFT stage before PPO). Success
(``env/success_rate``) = every box on a target. Published (Qwen2.5-VL-3B, Sokoban 6x6): verl-agent GiGPO 81.0, GRPO
67.1 (see the README's table for the others and what each was measured under).

What to edit: the prompt (``TASK``), the env's arguments (``env_kwargs``), the hyperparameters (the YAML, or flags).
"""

from __future__ import annotations

from pathlib import Path

from vlm_env_ppo.cli import build_trainer, parse_train_args, run_training
from vlm_env_ppo.tasks import RANDOM_FROZEN_LAKE, RANDOM_FROZEN_LAKE_TEXT, SOKOBAN, SOKOBAN_TEXT, register_task

CONFIG = Path(__file__).parent / "configs" / "sokoban_qwen2_5_vl_3b_verl_agent.yaml"
# The image tasks; the text-grid ones add the room as symbols (#, _, O, X, √, P, S) to every prompt, for a model that
# reads text better than pictures (or a text-only model with --allow_text_only_model true).
TASKS = {False: (SOKOBAN, RANDOM_FROZEN_LAKE), True: (SOKOBAN_TEXT, RANDOM_FROZEN_LAKE_TEXT)}


def main(argv: list[str] | None = None) -> dict:
    argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    text_grid = False
    if "--text_grid" in argv:  # this script's own flag, taken out before the train parser sees the rest
        k = argv.index("--text_grid")
        text_grid = argv[k + 1].lower() in ("1", "true", "yes")
        del argv[k : k + 2]
    for task in TASKS[text_grid]:
        register_task(task)  # the tasks the trainer (and `vlm_env_ppo.sft`) use for these env ids
    script_args, args, model_args = parse_train_args(
        argv, CONFIG, defaults={"env_id": SOKOBAN.env_id, "output_dir": "sokoban-ppo"}
    )
    trainer = build_trainer(script_args, args, model_args)
    return run_training(trainer, script_args)  # train, evaluate, save, print a summary


if __name__ == "__main__":
    main()
