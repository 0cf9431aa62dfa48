"""ALFWorld with PPO (the paper's second benchmark): household tasks, played one admissible command at a time.

    pip install 'vlm-env-ppo[alfworld]' && alfworld-download      # the engine, then the games (needs the network)
    python examples/alfworld.py                                      # RL4VLM's settings, LLaVA-1.6-7B, one GPU
    python examples/alfworld.py --env_kwargs '{"split": "train", "render_mode": "rgb_array"}'   # with AI2-THOR
    python examples/alfworld.py --config examples/configs/tiny_cpu.yaml --tiny_family text \\
        --allow_text_only_model true --env_kwargs '{"data_dir": "path/to/trials"}'     # tiny text LM, CPU, seconds

With no ``--config`` the script reads ``examples/configs/alfworld_llava_7b.yaml`` (RL4VLM's ``run_alf.sh`` values,
each with its source); every flag of ``vlm-env-ppo train --help`` overrides it.

The env (`vlm_env_ppo.envs.alfworld_env.ALFWorldEnv`, id ``vlm_env_ppo/ALFWorld-v0``) drives ALFWorld's text engine:
the observation is what the agent sees in words ("You arrive at countertop 1. On the countertop 1, you see an apple
1."), the action is a text command, and ``info["admissible_commands"]`` lists the legal ones. The built-in task
(`vlm_env_ppo.tasks.ALFWORLD`) puts the description, the goal ("Your task: put a clean apple in fridge") and the
admissible commands in the prompt; an output that names none of them plays a random admissible command and gets
``invalid_action_penalty`` (-1, RL4VLM's penalty for an inadmissible action). The env's reward is RL4VLM's:
``50 * won + goal-condition success rate`` per step. Success (``env/success_rate``) = the task done within 50 steps;
the paper's LLaVA-7B reached 21.7% on visual ALFWorld after SFT then RL (GPT-4V 19.4%).

``env_kwargs`` chooses the games: ``{"split": "train"}`` (under ``$ALFWORLD_DATA``), ``{"data_dir": ...}`` (any
folder of trials), ``{"game_files": [...]}``, ``{"task_types": [1, 3]}`` (pick-and-place, clean), and
``"render_mode": "rgb_array"`` for THOR frames (needs ``ai2thor``, a display and a GPU). Text-only play needs none of
that: ``tests/data/alfworld`` holds two hand-written trials that `make_alfworld_game` turns into games offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the `alfworld` package, and Python puts its folder first on sys.path: drop it, so that
# `import alfworld` (in the env) finds the package, not this script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from vlm_env_ppo.cli import build_trainer, parse_train_args, run_training
from vlm_env_ppo.tasks import ALFWORLD, register_task

CONFIG = Path(__file__).parent / "configs" / "alfworld_llava_7b.yaml"

# The prompt: edit here, e.g. register_task(dataclasses.replace(ALFWORLD, description="...")).
TASK = register_task(ALFWORLD)


def main(argv: list[str] | None = None) -> dict:
    script_args, args, model_args = parse_train_args(
        argv, CONFIG, defaults={"env_id": TASK.env_id, "output_dir": "alfworld-ppo"}
    )
    return run_training(build_trainer(script_args, args, model_args), script_args)


if __name__ == "__main__":
    main()
