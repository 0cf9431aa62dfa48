"""Any gymnasium env as a VLM agent's env: frames from ``render()``, text into ``info``, optional multi-turn history.

The trainer consumes one observation per step that is either a frame (H×W×3 uint8) or, for envs without pictures, a
text; what the env says in words goes into the prompt through ``info["observation_text"]``. `VLMEnvAdapter` turns
any env into that shape:

- **frame**: the observation itself when it is already an image (the gym_cards games), else ``env.render()`` when
  the env renders ``rgb_array`` frames (MiniGrid, FrozenLake, Taxi, ...), else none (a text-only env);
- **text**: a string observation (TextWorld, ALFWorld), the string fields of a `Dict` observation (MiniGrid's
  ``mission``), or whatever your ``describe(observation, info)`` returns.

`HistoryWrapper` adds the last K turns (frame, text and the action played) to ``info["history"]``; `Task` renders
them as earlier chat turns, so the policy sees a multi-turn conversation while log-probs and values are still those
of the current turn's completion. The trainer applies both for you (`make_env` here, ``history_length`` in
`VLMPPOConfig`); use them directly for your own loops:

```python
>>> import gymnasium as gym
>>> from vlm_env_ppo.envs.adapter import make_env
>>> env = make_env("FrozenLake-v1", is_slippery=False)   # renders rgb_array frames: made with render_mode set
>>> frame, info = env.reset(seed=0)
>>> frame.shape, info["observation_text"]
((256, 256, 3), '')

```
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .textworld_env import MAX_OBSERVATION_LENGTH, text_space

OBSERVATION_TEXT = "observation_text"
HISTORY = "history"
# A text observation space for text-only envs (the text games' own); the vector env keeps a tuple of these strings.
TEXT_SPACE = text_space(MAX_OBSERVATION_LENGTH)


def is_image_space(space: gym.Space) -> bool:
    """Whether observations of ``space`` are pictures: an H×W or H×W×C (C in 1, 3, 4) `Box` of uint8 or floats, at
    least 8×8 pixels.

    MiniGrid's 7×7×3 symbolic grid encoding is not a picture (it is smaller, and holds object ids, not colours), so
    such envs are rendered instead.
    """
    if not isinstance(space, spaces.Box):
        return False
    shape = space.shape
    if not (len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4))) or min(shape[:2]) < 8:
        return False
    return space.dtype == np.uint8 or np.issubdtype(space.dtype, np.floating)


def default_describe(observation: Any, info: dict) -> str:
    """The text of an observation: a string itself; a `dict`'s string fields (``"mission: ..."``); else ``""``."""
    if isinstance(observation, str):
        return observation
    if isinstance(observation, dict):
        return "\n".join(f"{key}: {value}" for key, value in observation.items() if isinstance(value, str) and value)
    return ""


class VLMEnvAdapter(gym.Wrapper):
    """Observations become frames (or, with no picture, the observation text); the text goes to
    ``info["observation_text"]``.

    Args:
        env: any gymnasium env. To use its ``render()`` frames, make it with ``render_mode="rgb_array"``
            (`make_env` does that when the env supports it).
        image (`str`): where frames come from: ``"auto"`` (the observation when `is_image_space`, else ``render()``
            when the env's render mode is ``rgb_array``, else none), ``"observation"``, ``"render"`` or ``"none"``
            (text-only).
        describe (`Callable[[observation, info], str]`, *optional*): the text of a step; default
            `default_describe` (string observations, the string fields of dict observations). Return ``""`` for
            none. A text-only env with no text would give the model nothing to see: that is an error.

    Text-only envs get a `gymnasium.spaces.Text` observation space (their observation is the text); others a `Box`
    of the frame's shape, found by rendering once after a reset at construction (as gymnasium's
    `AddRenderObservation` does).
    """

    def __init__(
        self,
        env: gym.Env,
        image: str = "auto",
        describe: Callable[[Any, dict], str] | None = None,
    ):
        super().__init__(env)
        if image not in ("auto", "observation", "render", "none"):
            raise ValueError(f"`image` must be 'auto', 'observation', 'render' or 'none', got {image!r}.")
        if image == "auto":
            if is_image_space(env.observation_space):
                image = "observation"
            elif env.render_mode == "rgb_array":
                image = "render"
            else:
                image = "none"
        if image == "render" and env.render_mode != "rgb_array":
            raise ValueError(
                f"`image='render'` needs the env made with render_mode='rgb_array' (it has {env.render_mode!r})."
            )
        self.image = image
        self.describe = describe or default_describe
        if image == "observation":
            self.observation_space = env.observation_space
        elif image == "render":
            env.reset()
            frame = env.render()
            if not isinstance(frame, np.ndarray) or frame.ndim != 3:
                raise TypeError(f"env.render() must return an H×W×3 array in rgb_array mode, got {type(frame)}.")
            self.observation_space = spaces.Box(0, 255, frame.shape, np.uint8)
        else:
            self.observation_space = TEXT_SPACE

    def _convert(self, observation, info: dict):
        text = self.describe(observation, info)
        if not isinstance(text, str):
            raise TypeError(f"`describe` must return a str, got {type(text).__name__}.")
        info = {**info, OBSERVATION_TEXT: text}
        if self.image == "observation":
            return observation, info
        if self.image == "render":
            return np.asarray(self.env.render(), dtype=np.uint8), info
        if not text:
            raise ValueError(
                "This env has no frames and its observation has no text: pass `describe=` to say what the agent "
                f"sees (observation was {type(observation).__name__})."
            )
        return text, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        observation, info = self.env.reset(seed=seed, options=options)
        return self._convert(observation, info)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        observation, info = self._convert(observation, info)
        return observation, reward, terminated, truncated, info


class HistoryWrapper(gym.Wrapper):
    """Adds the last ``length`` turns of the episode to ``info["history"]``, oldest first.

    Each turn is ``{"frame": H×W×3 uint8 array or None, "text": str, "action": str}``: what the agent saw then and
    the action the env received (the fallback action when the model's output was invalid), named with
    ``action_names`` (``action_names[i]`` for a `Discrete` action ``i + start``) or, for text actions, the command
    itself. The history is cleared at every reset, so it never crosses episodes.
    """

    def __init__(self, env: gym.Env, length: int, action_names: Sequence[str] | None = None):
        super().__init__(env)
        if length < 1:
            raise ValueError(f"`length` must be >= 1, got {length}.")
        self.length = length
        self.action_names = tuple(action_names) if action_names is not None else None
        self._turns: deque[dict] = deque(maxlen=length)
        self._last: tuple[Any, dict] | None = None

    def _action_text(self, action) -> str:
        if isinstance(action, str):
            return action
        index = int(action) - int(getattr(self.action_space, "start", 0))
        if self.action_names is not None and 0 <= index < len(self.action_names):
            return self.action_names[index]
        return str(int(action))

    def _with_history(self, observation, info: dict):
        self._last = (observation, info)
        return observation, {**info, HISTORY: list(self._turns)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._turns.clear()
        observation, info = self.env.reset(seed=seed, options=options)
        return self._with_history(observation, info)

    def step(self, action):
        if self._last is not None:
            observation, info = self._last
            frame = np.asarray(observation) if not isinstance(observation, str) else None
            self._turns.append(
                {"frame": frame, "text": str(info.get(OBSERVATION_TEXT, "")), "action": self._action_text(action)}
            )
        observation, reward, terminated, truncated, info = self.env.step(action)
        # The episode's last info carries its history like every other step's: the vector env hands it on as
        # ``final_info``, and a truncated episode's final observation is valued with it (its prompt must look like
        # the prompts of the rest of the episode). The turns are cleared after it is built, not before.
        info = self._with_history(observation, info)[1]
        if terminated or truncated:
            self._turns.clear()
        return observation, reward, terminated, truncated, info


def adapt_env(env: gym.Env) -> gym.Env:
    """``env`` itself when its observations are frames or it is already adapted; else ``VLMEnvAdapter(env)``."""
    wrapper = env
    while isinstance(wrapper, gym.Wrapper):
        if isinstance(wrapper, VLMEnvAdapter):
            return env
        wrapper = wrapper.env
    return env if is_image_space(env.observation_space) else VLMEnvAdapter(env)


def adapted_factory(env: str | Callable[[], gym.Env], **kwargs) -> Callable[[], gym.Env]:
    """A zero-argument factory of adapted envs: `make_env` for an env id (with ``kwargs``), `adapt_env` around a
    user factory's envs."""
    if isinstance(env, str):
        return lambda: make_env(env, **kwargs)
    return lambda: adapt_env(env())


def make_env(env_id: str, **kwargs) -> gym.Env:
    """``gym.make(env_id, **kwargs)``, adapted for a VLM agent (`adapt_env`).

    Envs that support ``rgb_array`` rendering are made with ``render_mode="rgb_array"`` when no render mode is given,
    so that envs whose observations are not frames (MiniGrid, FrozenLake) are shown to the model as their rendered
    frames. The trainer, `VLMAgent.evaluate` and ``vlm-env-ppo play`` make env ids with this.
    """
    _import_plugin(env_id)
    if "render_mode" not in kwargs and "rgb_array" in _render_modes(env_id):
        kwargs["render_mode"] = "rgb_array"
    return adapt_env(gym.make(env_id, **kwargs))


# Packages that register gymnasium ids on import, by id prefix (so `"MiniGrid-Empty-5x5-v0"` works without an import).
_PLUGINS = {"MiniGrid-": "minigrid", "BabyAI-": "minigrid"}


def _import_plugin(env_id: str) -> None:
    if env_id in gym.envs.registry:
        return
    for prefix, module in _PLUGINS.items():
        if env_id.startswith(prefix):
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise ImportError(f"{env_id} needs the `{module}` package: pip install {module}") from err


def _render_modes(env_id: str) -> Sequence[str]:
    try:
        creator = gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
    except (gym.error.Error, ImportError, AttributeError):  # gym.make raises gymnasium's own error for these
        return ()
    return getattr(creator, "metadata", {}).get("render_modes", ()) or ()
