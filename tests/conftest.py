"""Shared fixtures: tiny offline VLM checkpoints, built once per test session."""

import os

import pytest
import torch

# The tiny models do many small matmuls: with pytest-xdist running 2 workers on 2 cores, extra intra-op threads only
# contend (measured ~8x slower on this machine, and ~50x for bitsandbytes' CPU 4-bit path).
torch.set_num_threads(1)

from vlm_env_ppo.models.tiny import build_tiny_vlm

# tests/vllm_lane/ runs in the vLLM lane's own virtual environment (tests/test_vllm_lane.py builds it and runs them).
collect_ignore = [] if os.environ.get("VLM_ENV_PPO_VLLM_LANE") == "1" else ["vllm_lane"]


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """Factory ``tiny_vlm_path(family="llava_next", seed=0) -> str``: a saved tiny VLM checkpoint directory.

    Each ``(family, seed)`` is built once per session (per xdist worker) and shared: load it with
    ``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained`` and never write into it.
    """
    cache: dict[tuple[str, int], str] = {}

    def get(family: str = "llava_next", seed: int = 0) -> str:
        key = (family, seed)
        if key not in cache:
            cache[key] = build_tiny_vlm(family, tmp_path_factory.mktemp(f"tiny-{family}-seed{seed}"), seed=seed)
        return cache[key]

    return get


ALFWORLD_TRIALS = (
    "pick_clean_then_place_in_recep-Apple-None-Fridge-1/trial_tiny_clean_apple",
    "look_at_obj_in_light-Book-None-DeskLamp-1/trial_tiny_book_lamp",
)


@pytest.fixture(scope="session")
def textworld_games(tmp_path_factory):
    """Three small TextWorld games generated offline with TextWorld's own compiler (seed 0): their file paths."""
    from vlm_env_ppo.envs.textworld_env import make_textworld_games

    return make_textworld_games(tmp_path_factory.mktemp("textworld_games"), num_games=3, seed=0)


@pytest.fixture(scope="session")
def alfworld_data(tmp_path_factory):
    """A copy of ``tests/data/alfworld`` (two hand-written ALFWorld trials) with their ``game.tw-pddl`` built from
    the PDDL domain and grammar the ``alfworld`` wheel ships: a data folder for ``ALFWorldEnv(data_dir=...)``."""
    import shutil
    from pathlib import Path

    from vlm_env_ppo.envs.alfworld_env import make_alfworld_game

    root = tmp_path_factory.mktemp("alfworld")
    shutil.copytree(Path(__file__).parent / "data" / "alfworld", root, dirs_exist_ok=True)
    for trial in ALFWORLD_TRIALS:
        make_alfworld_game(root / trial, seed=0)
    return root
