"""MiniGrid with PPO: any gymnasium env with a rendered frame and named actions, here `MiniGrid-Empty-5x5-v0`.

    pip install minigrid
    python examples/minigrid.py                                            # Qwen2.5-VL-3B, one GPU
    python examples/minigrid.py --env_id MiniGrid-FourRooms-v0 --total_env_steps 100000
    python examples/minigrid.py --config examples/configs/tiny_cpu.yaml --history_length 2   # tiny VLM, CPU, ~30 s

With no ``--config`` the script reads ``examples/configs/minigrid_qwen2_5_vl_3b.yaml``; every flag of
``vlm-env-ppo train --help`` overrides it. The agent is saved to ``output_dir``; ``vlm-env-ppo play minigrid-ppo``
writes an HTML replay of it (the env is rebuilt from the saved env id, arguments and history length).

How MiniGrid reaches the model, with no MiniGrid-specific code in the trainer:

- `vlm_env_ppo.envs.adapter.make_env` makes the env with ``render_mode="rgb_array"`` (MiniGrid's observation is a
  7×7 symbolic grid, not a picture) and wraps it in `VLMEnvAdapter`: the observation becomes the rendered frame and
  the mission ("get to the green goal square") goes to ``info["observation_text"]``, which the prompt includes.
- The `Task` names MiniGrid's seven actions in index order and offers only the three movement ones
  (``admissible_actions``): the prompt lists them, the parser accepts only them, and an invalid output's random
  fallback draws from them.
- ``history_length`` puts the last turns (frame, text, action played) before the current one as earlier chat turns.

Success = reaching the goal (terminated with a positive reward, ``1 - 0.9 * steps / max_steps``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the `minigrid` package, and Python puts its folder first on sys.path: drop it, so that
# `import minigrid` (which registers the MiniGrid env ids) finds the package, not this script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from vlm_env_ppo.cli import build_trainer, parse_train_args, run_training
from vlm_env_ppo.tasks import get_task

CONFIG = Path(__file__).parent / "configs" / "minigrid_qwen2_5_vl_3b.yaml"


def main(argv: list[str] | None = None) -> dict:
    script_args, args, model_args = parse_train_args(
        argv, CONFIG, defaults={"env_id": "MiniGrid-Empty-5x5-v0", "output_dir": "minigrid-ppo"}
    )
    # The built-in MiniGrid tasks (Empty-*, FourRooms: movement only; any other MiniGrid id: all seven actions).
    # Edit the prompt here, e.g. for DoorKey, which needs "pick up" and "toggle":
    #     register_task(dataclasses.replace(minigrid_task(env_id, movement_only=False), description="..."))
    if not script_args.env_id.startswith("MiniGrid-"):
        raise SystemExit(f"examples/minigrid.py trains MiniGrid envs; got --env_id {script_args.env_id}.")
    trainer = build_trainer(script_args, args, model_args, task=get_task(script_args.env_id))
    return run_training(trainer, script_args)


if __name__ == "__main__":
    main()
