"""Write one frame of each gym_cards env to ``docs/<name>.png`` (a mid-episode frame for the points games).

Run from the repository root:

    python scripts/render_env_frames.py [--out-dir docs] [--seed 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
from PIL import Image

import vlm_env_ppo.envs  # noqa: F401  (registers the gym_cards ids)
from vlm_env_ppo.envs.solvers import blackjack_basic_strategy, points_expert_action


def points_frame(env_id: str, seed: int, tokens_to_type: int):
    """A frame after the expert typed ``tokens_to_type`` tokens of its solution (on the first solvable deal)."""
    env = gym.make(env_id)
    names = env.unwrapped.action_names
    for s in range(seed, seed + 1000):
        frame, info = env.reset(seed=s)
        if info["solvable"]:
            break
    for _ in range(tokens_to_type):
        action = points_expert_action(info, action_names=names)
        if names[action] == "=":
            break
        frame, _, _, _, info = env.step(action)
    env.close()
    return frame, info


def number_line_frame(seed: int):
    env = gym.make("gym_cards/NumberLine-v0")
    frame, info = env.reset(seed=seed)
    env.close()
    return frame, info


def blackjack_frame(seed: int):
    """A frame after one hit, on the first deal where basic strategy hits."""
    env = gym.make("gym_cards/Blackjack-v0")
    for s in range(seed, seed + 1000):
        frame, info = env.reset(seed=s)
        if blackjack_basic_strategy(info) == 1:
            frame, _, _, _, info = env.step(1)
            break
    env.close()
    return frame, info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="docs", type=Path)
    parser.add_argument("--seed", default=3, type=int)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    frames = {
        "numberline": number_line_frame(args.seed),
        "ezpoints": points_frame("gym_cards/EZPoints-v0", args.seed, 2),
        "points24": points_frame("gym_cards/Points24-v0", args.seed, 5),
        "blackjack": blackjack_frame(args.seed),
    }
    for name, (frame, info) in frames.items():
        path = args.out_dir / f"{name}.png"
        Image.fromarray(frame).save(path)
        print(f"{path}: {frame.shape} {info}")


if __name__ == "__main__":
    main()
