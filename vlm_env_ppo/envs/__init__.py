"""The gym_cards environments of RL4VLM (Zhai et al., NeurIPS 2024), rebuilt: pixel observations drawn with
Pillow, exact arithmetic, seeding through ``np_random`` only.

Importing this package registers, with gymnasium:

- ``gym_cards/NumberLine-v0`` (`NumberLineEnv`), ``gym_cards/EZPoints-v0`` (`EZPointsEnv`),
  ``gym_cards/Points24-v0`` (`Points24Env`), ``gym_cards/Blackjack-v0`` (`BlackjackEnv`): the paper's ids, so its
  users can switch;
- ``vlm_env_ppo/ColorChoice-v0`` (`vlm_env_ppo.envs.probe.ColorChoiceEnv`): a one-step visual probe for tests;
- ``vlm_env_ppo/DelayedCredit-v0``, ``vlm_env_ppo/Trap-v0``, ``vlm_env_ppo/Memory-v0``, ``vlm_env_ppo/GridNav-v0``
  (`vlm_env_ppo.envs.multistep_probes`): multi-step probes, each isolating one thing PPO must get right (delayed
  credit, discounting, memory through ``history_length``, sparse reward with truncation);
- ``vlm_env_ppo/Sokoban-v0`` (`vlm_env_ppo.envs.sokoban.SokobanEnv`): Sokoban with the standard random generator and
  the published settings of verl-agent, VAGEN and RAGEN selectable by name (``rules=``), and
  ``vlm_env_ppo/SokobanProbe-v0`` (`SokobanProbeEnv`), its one-push learning probe for tiny models;
- ``vlm_env_ppo/FrozenLake-v0`` (`vlm_env_ppo.envs.frozen_lake.FrozenLakeEnv`): gymnasium's FrozenLake on a new random
  map at every reset, with VAGEN's, RAGEN's and ROLL's map and slipperiness settings by name (``rules=``);
- ``vlm_env_ppo/TextWorld-v0`` (`vlm_env_ppo.envs.textworld_env.TextWorldEnv`, needs the ``textworld`` extra; pass
  ``game_files=`` or ``games_dir=``) and ``vlm_env_ppo/ALFWorld-v0`` (`vlm_env_ppo.envs.alfworld_env.ALFWorldEnv`,
  needs the ``alfworld`` extra and its data): text games, observations and actions are strings.

Registration is idempotent: ids already in ``gymnasium.envs.registry`` are left alone.

```python
>>> import gymnasium as gym
>>> import vlm_env_ppo.envs
>>> env = gym.make("gym_cards/Points24-v0")
>>> frame, info = env.reset(seed=0)
>>> frame.shape, sorted(info)[:4]
((300, 300, 3), ['Cards', 'Formula', 'Numbers', 'Suits'])

```
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from .blackjack import BlackjackEnv
from .ez_points import EZPointsEnv
from .number_line import NumberLineEnv
from .points24 import Points24Env
from .multistep_probes import DelayedCreditEnv, GridNavEnv, MemoryEnv, TrapEnv
from .probe import ColorChoiceEnv
from .frozen_lake import FrozenLakeEnv
from .sokoban import SokobanEnv, SokobanProbeEnv

ENTRY_POINTS = {
    "gym_cards/NumberLine-v0": "vlm_env_ppo.envs.number_line:NumberLineEnv",
    "gym_cards/EZPoints-v0": "vlm_env_ppo.envs.ez_points:EZPointsEnv",
    "gym_cards/Points24-v0": "vlm_env_ppo.envs.points24:Points24Env",
    "gym_cards/Blackjack-v0": "vlm_env_ppo.envs.blackjack:BlackjackEnv",
    "vlm_env_ppo/ColorChoice-v0": "vlm_env_ppo.envs.probe:ColorChoiceEnv",
    "vlm_env_ppo/DelayedCredit-v0": "vlm_env_ppo.envs.multistep_probes:DelayedCreditEnv",
    "vlm_env_ppo/Trap-v0": "vlm_env_ppo.envs.multistep_probes:TrapEnv",
    "vlm_env_ppo/Memory-v0": "vlm_env_ppo.envs.multistep_probes:MemoryEnv",
    "vlm_env_ppo/GridNav-v0": "vlm_env_ppo.envs.multistep_probes:GridNavEnv",
    "vlm_env_ppo/Sokoban-v0": "vlm_env_ppo.envs.sokoban:SokobanEnv",
    "vlm_env_ppo/FrozenLake-v0": "vlm_env_ppo.envs.frozen_lake:FrozenLakeEnv",
    "vlm_env_ppo/SokobanProbe-v0": "vlm_env_ppo.envs.sokoban:SokobanProbeEnv",
    # Text games: their modules import textworld/alfworld only when an env is made.
    "vlm_env_ppo/TextWorld-v0": "vlm_env_ppo.envs.textworld_env:TextWorldEnv",
    "vlm_env_ppo/ALFWorld-v0": "vlm_env_ppo.envs.alfworld_env:ALFWorldEnv",
}

# Env id -> action names in the env's index order (``ACTION_NAMES[env_id][i]`` is action ``i``), default arguments.
ACTION_NAMES: dict[str, tuple[str, ...]] = {
    "gym_cards/NumberLine-v0": NumberLineEnv.ACTION_NAMES,
    "gym_cards/EZPoints-v0": EZPointsEnv.ACTION_NAMES,
    "gym_cards/Points24-v0": Points24Env.ACTION_NAMES,
    "gym_cards/Blackjack-v0": BlackjackEnv.ACTION_NAMES,
    "vlm_env_ppo/ColorChoice-v0": ColorChoiceEnv.ACTION_NAMES,
    "vlm_env_ppo/DelayedCredit-v0": DelayedCreditEnv.ACTION_NAMES,
    "vlm_env_ppo/Trap-v0": TrapEnv.ACTION_NAMES,
    "vlm_env_ppo/Memory-v0": MemoryEnv.ACTION_NAMES,
    "vlm_env_ppo/GridNav-v0": GridNavEnv.ACTION_NAMES,
    "vlm_env_ppo/Sokoban-v0": SokobanEnv.ACTION_NAMES,
    "vlm_env_ppo/FrozenLake-v0": FrozenLakeEnv.ACTION_NAMES,
    "vlm_env_ppo/SokobanProbe-v0": SokobanProbeEnv.ACTION_NAMES,
}


def register_envs() -> None:
    """Register every env of `ENTRY_POINTS` that gymnasium does not know yet (safe to call any number of times)."""
    for env_id, entry_point in ENTRY_POINTS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point)


register_envs()

__all__ = [
    "ACTION_NAMES",
    "ENTRY_POINTS",
    "BlackjackEnv",
    "ColorChoiceEnv",
    "DelayedCreditEnv",
    "EZPointsEnv",
    "FrozenLakeEnv",
    "GridNavEnv",
    "MemoryEnv",
    "NumberLineEnv",
    "Points24Env",
    "SokobanEnv",
    "SokobanProbeEnv",
    "TrapEnv",
    "register_envs",
]
