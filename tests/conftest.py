"""Shared fixtures: tiny offline VLM checkpoints, built once per test session."""

import pytest
import torch

# The tiny models do many small matmuls: with pytest-xdist running 2 workers on 2 cores, extra intra-op threads only
# contend (measured ~8x slower on this machine, and ~50x for bitsandbytes' CPU 4-bit path).
torch.set_num_threads(1)

from vlm_env_ppo.models.tiny import build_tiny_vlm


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
