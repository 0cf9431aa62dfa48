"""Models: the value head, policy / reference loading, and tiny offline VLMs for tests and the quickstart.

Importing this package makes processors with a video sub-processor (Qwen2.5-VL ...) constructible and loadable
without torchvision (`tiny_processing.allow_video_processors_without_torchvision`; a no-op when torchvision is
installed).
"""

from .loading import generation_suppress_token_ids
from .tiny import build_tiny_vlm, create_tiny_vlm
from .tiny_processing import TINY_FAMILIES, allow_video_processors_without_torchvision, train_tiny_tokenizer

allow_video_processors_without_torchvision()

__all__ = [
    "TINY_FAMILIES",
    "allow_video_processors_without_torchvision",
    "build_tiny_vlm",
    "create_tiny_vlm",
    "generation_suppress_token_ids",
    "train_tiny_tokenizer",
]
