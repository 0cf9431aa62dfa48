"""vlm-env-ppo: PPO for vision-language-model agents in interactive gymnasium environments.

Importing the package registers the gym_cards environments (``gym_cards/NumberLine-v0`` ...) with gymnasium. The
trainer and its config are imported on first use, so ``import vlm_env_ppo`` stays light.
"""

from . import envs  # noqa: F401  (registers the environments)
from .actions import ParsedAction, parse_action
from .tasks import Task, get_task, register_task

__version__ = "0.1.0.dev0"

_LAZY = {
    "VLMPPOConfig": "vlm_env_ppo.config",
    "VLMPPOTrainer": "vlm_env_ppo.trainer",
    "VLMAgent": "vlm_env_ppo.agent",
}

__all__ = [
    "ParsedAction", "Task", "VLMAgent", "VLMPPOConfig", "VLMPPOTrainer", "get_task", "parse_action", "register_task"
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlm_env_ppo' has no attribute {name!r}")
