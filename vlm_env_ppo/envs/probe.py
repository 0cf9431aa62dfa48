"""ColorChoice: a one-step visual probe task whose answer is only in the image.

Used by the learning test and the embedded quickstart: a tiny VLM can learn it on a laptop CPU in minutes, so a
wrong sign or a wrong mask in the PPO machinery shows up as a run that stays at chance.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

COLORS = {"red": (220, 40, 40), "blue": (40, 60, 220)}


class ColorChoiceEnv(gym.Env):
    """
    ## Description
    The frame is filled with one of two colours, red or blue, chosen uniformly at random. The agent names the colour.
    Nothing but the image tells the answer: the prompt is the same for both colours.

    ## Action Space
    `Discrete(2)`: 0 `red`, 1 `blue`.

    ## Observation Space
    `Box(0, 255, (size, size, 3), uint8)`: the frame, with a little pixel noise so frames are never identical.

    ## Rewards
    +1 for the right colour, 0 otherwise.

    ## Episode End
    Terminates after one step; `info["is_success"]` says whether the answer was right.

    ## Arguments
    `size` (default 64): frame side in pixels. `render_mode`: only `"rgb_array"`.

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    ACTION_NAMES = tuple(COLORS)

    def __init__(self, size: int = 64, render_mode: str | None = "rgb_array"):
        self.size = size
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(len(COLORS))
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self._color = 0
        self._frame = np.zeros((size, size, 3), np.uint8)

    def _draw(self) -> np.ndarray:
        rgb = np.array(COLORS[self.ACTION_NAMES[self._color]], dtype=np.int16)
        noise = self.np_random.integers(-20, 21, size=(self.size, self.size, 3))
        return np.clip(rgb + noise, 0, 255).astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._color = int(self.np_random.integers(len(COLORS)))
        self._frame = self._draw()
        return self._frame.copy(), {}

    def step(self, action):
        success = int(action) == self._color
        return self._frame.copy(), float(success), True, False, {"is_success": success}

    def render(self):
        return self._frame.copy()
