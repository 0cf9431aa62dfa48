"""vlm-env-ppo: PPO for vision-language-model agents in interactive gymnasium environments."""

__version__ = "0.1.0.dev0"
