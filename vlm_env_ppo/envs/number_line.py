"""NumberLine: move the current number to the target, one step at a time (RL4VLM's gym_cards ``NumberLine-v0``)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from .cards import BLACK, RED, draw_centered_text, font


def sample_positions(np_random: np.random.Generator, max_position: int) -> tuple[int, int]:
    """A (target, current) pair, uniform over the distinct pairs of integers in [0, max_position]."""
    target = int(np_random.integers(0, max_position + 1))
    current = int(np_random.integers(0, max_position))  # one of the max_position values other than the target
    if current >= target:
        current += 1
    return target, current


def move(current: int, action: int, max_position: int) -> int:
    """The position after ``action`` (0 ``-``, 1 ``+``), clamped to [0, max_position]."""
    return min(max(current + (1 if action == 1 else -1), 0), max_position)


def step_reward(previous: int, current: int, target: int) -> tuple[float, bool]:
    """(reward, terminated) for a move from ``previous`` to ``current``: +1 and done on the target, −1 if the
    distance did not shrink (a wrong way, or a move against the clamp), 0 otherwise."""
    distance, previous_distance = abs(current - target), abs(previous - target)
    if distance == 0:
        return 1.0, True
    if distance >= previous_distance:
        return -1.0, False
    return 0.0, False


class NumberLineEnv(gym.Env):
    """
    ## Description
    The frame shows "Target: t" and "Current: c", two distinct integers in [0, max_position], and a number line
    with the current position (filled red dot) and the target (ring). The agent moves the current number one
    step at a time until it equals the target. This is the "NumberLine" task of Zhai et al. (NeurIPS 2024),
    RL4VLM's ``gym_cards/NumberLine-v0``.

    ## Action Space
    `Discrete(2)`: 0 ``-`` (subtract one), 1 ``+`` (add one). Moves are clamped to [0, max_position].

    ## Observation Space
    `Box(0, 255, (frame_size, frame_size, 3), uint8)`, 300×300 by default: black text on white.

    ## Rewards
    - +1 when the current number reaches the target.
    - −1 when the distance to the target did not shrink (a step away, or a step into the clamp).
    - 0 otherwise (a step closer).

    ## Episode End
    - Termination: the current number equals the target.
    - Truncation: ``2 * max_position`` steps without reaching it.

    ## Information
    ``info`` has ``"Target"`` and ``"Current"`` (RL4VLM's keys), ``"max_position"`` and ``"is_success"``.

    ## Arguments
    - ``render_mode`` (default ``"rgb_array"``): the only render mode; `render` returns the current frame.
    - ``max_position`` (default 5): the largest number; target and start are drawn from [0, max_position].
    - ``frame_size`` (default 300): the side of the square frame in pixels (at least 96).

    ``reset(options={"target": t, "current": c})`` starts from a given pair instead of a random one (the random
    draws still happen, so the generator's stream does not depend on options).

    ## Version History
    - v0: the RL4VLM rules, seeded through ``np_random`` only, target and start distinct and uniform.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    ACTION_NAMES = ("-", "+")

    def __init__(self, render_mode: str | None = "rgb_array", max_position: int = 5, frame_size: int = 300):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Unsupported render_mode {render_mode!r}; the only render mode is 'rgb_array'.")
        if int(max_position) < 1:
            raise ValueError(f"`max_position` must be >= 1 (target and start must differ), got {max_position}.")
        if int(frame_size) < 96:
            raise ValueError(f"`frame_size` must be >= 96 pixels for the text to stay legible, got {frame_size}.")
        self.render_mode = render_mode
        self.max_position = int(max_position)
        self.frame_size = int(frame_size)
        self.max_steps = 2 * self.max_position
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, 255, (self.frame_size, self.frame_size, 3), np.uint8)
        self._target = self._current = self._steps = 0
        self._frame = np.zeros(self.observation_space.shape, np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._target, self._current = sample_positions(self.np_random, self.max_position)
        if options and (options.get("target") is not None or options.get("current") is not None):
            self._target = int(options.get("target", self._target))  # a fixed start, e.g. for evaluation or tests
            self._current = int(options.get("current", self._current))
            if not (0 <= self._target <= self.max_position and 0 <= self._current <= self.max_position):
                raise ValueError(f"`options` target and current must be in [0, {self.max_position}], got {options}.")
            if self._target == self._current:
                raise ValueError(f"`options` target and current must differ, got {options}.")
        self._steps = 0
        self._frame = self._draw_frame()
        return self._frame.copy(), self._get_info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"Invalid action {action!r}; expected 0 ('-') or 1 ('+').")
        self._steps += 1
        previous = self._current
        self._current = move(self._current, int(action), self.max_position)
        reward, terminated = step_reward(previous, self._current, self._target)
        truncated = not terminated and self._steps >= self.max_steps
        self._frame = self._draw_frame()
        info = self._get_info()
        info["is_success"] = terminated
        return self._frame.copy(), reward, terminated, truncated, info

    def _get_info(self) -> dict:
        return {
            "Target": self._target,
            "Current": self._current,
            "max_position": self.max_position,
            "is_success": False,
        }

    def _draw_frame(self) -> np.ndarray:
        size = self.frame_size
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        text_size = max(14, size // 9)
        draw.text((size * 0.1, size * 0.12), f"Target: {self._target}", font=font(text_size), fill=BLACK)
        draw.text((size * 0.1, size * 0.36), f"Current: {self._current}", font=font(text_size), fill=BLACK)
        # The number line: ticks at every integer (labels thinned out when there are many), target ring, current dot.
        y, left, right = size * 0.75, size * 0.08, size * 0.92
        draw.line([(left, y), (right, y)], fill=BLACK, width=2)
        step = (right - left) / self.max_position
        label_every = max(1, int(np.ceil(self.max_position / 10)))
        label_size = max(10, size // 20)
        radius = max(3, min(size // 30, step * 0.35))
        for k in range(self.max_position + 1):
            x = left + k * step
            draw.line([(x, y - size * 0.02), (x, y + size * 0.02)], fill=BLACK, width=2)
            if k % label_every == 0 or k in (self._target, self._current):
                draw_centered_text(draw, (x, y + size * 0.07), str(k), label_size, BLACK)
        x_target, x_current = left + self._target * step, left + self._current * step
        draw.ellipse(
            [x_target - 1.6 * radius, y - 1.6 * radius, x_target + 1.6 * radius, y + 1.6 * radius],
            outline=(0, 140, 60),
            width=3,
        )
        draw.ellipse([x_current - radius, y - radius, x_current + radius, y + radius], fill=RED)
        return np.array(image, dtype=np.uint8)

    def render(self):
        """The current frame (H×W×3 uint8)."""
        return self._frame.copy()
