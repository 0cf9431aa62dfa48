"""Blackjack with a pixel observation: gymnasium's ``Blackjack-v1`` rules, drawn as cards (RL4VLM's gym_cards
``Blackjack-v0``).

The game draws exactly what gymnasium's `BlackjackEnv` draws, in the same order, from ``self.np_random``: for the
same seed and the same actions the hands, rewards and terminations are identical to ``Blackjack-v1`` (the tests
check it). The look of the cards that gymnasium does not draw — the suit of every card but the dealer's up card,
and which of 10/J/Q/K a ten-valued card shows — comes from a separate *cosmetic* generator seeded from
``np_random``'s state after the deal (`cosmetic_rng`), which reads the state without advancing it. So the frames
are reproducible from the seed and the game itself stays draw-for-draw the same as gymnasium's.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from .cards import SUITS, TABLE_GREEN, font, paste_card

# 1 = Ace, 2-10 = number cards, Jack/Queen/King = 10: gymnasium's infinite deck (toy_text/blackjack.py).
DECK = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10]
_GYMNASIUM_SUITS = {"C": "clubs", "D": "diamonds", "H": "hearts", "S": "spades"}
FRAME_SIZE = 300
CARD_W, CARD_H = 64, 90


def draw_value(np_random: np.random.Generator) -> int:
    """One card value from the infinite deck, exactly as gymnasium's ``draw_card`` (``np_random.choice(deck)``)."""
    return int(np_random.choice(DECK))


def usable_ace(values: list[int]) -> bool:
    """Whether the hand has an ace that can count 11 without busting."""
    return 1 in values and sum(values) + 10 <= 21


def hand_sum(values: list[int]) -> int:
    """The hand's total, counting one ace as 11 when that does not bust."""
    return sum(values) + 10 if usable_ace(values) else sum(values)


def is_natural(values: list[int]) -> bool:
    """An ace and a ten-valued card."""
    return sorted(values) == [1, 10]


def score(values: list[int]) -> int:
    """The hand's total, 0 when bust."""
    total = hand_sum(values)
    return 0 if total > 21 else total


def cosmetic_rng(np_random: np.random.Generator) -> np.random.Generator:
    """A generator for the cards' looks, seeded from ``np_random``'s current state without advancing it."""
    entropy: list[int] = []

    def collect(value):
        if isinstance(value, dict):
            for key in sorted(value):
                collect(value[key])
        elif isinstance(value, np.ndarray):
            entropy.extend(int(v) & 0xFFFFFFFF for v in value.ravel())
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            entropy.append(abs(int(value)))

    collect(np_random.bit_generator.state)
    return np.random.default_rng(np.random.SeedSequence(entropy or [0]))


def card_look(value: int, rng: np.random.Generator) -> tuple[str, str]:
    """The (label, suit) shown for a card of ``value``: a ten-valued card shows 10, J, Q or K."""
    if value == 1:
        label = "A"
    elif value == 10:
        label = ("10", "J", "Q", "K")[int(rng.integers(4))]
    else:
        label = str(value)
    return label, SUITS[int(rng.integers(len(SUITS)))]


class BlackjackEnv(gym.Env):
    """
    ## Description
    Gymnasium's Blackjack (``Blackjack-v1`` with ``natural=False, sab=False``; Sutton & Barto, Example 5.1) with
    a pixel observation. Cards come from an infinite deck; face cards count 10 and an ace counts 11 unless that
    busts the hand. The player sees the dealer's face-up card and their own cards, and hits until they stand or
    bust; then the dealer draws until 17 or more (standing on soft 17). This is the "Blackjack" task of Zhai et
    al. (NeurIPS 2024), RL4VLM's ``gym_cards/Blackjack-v0``. For the same seed and actions, hands, rewards and
    terminations equal gymnasium's ``Blackjack-v1``.

    ## Action Space
    `Discrete(2)`: 0 ``stand`` (gymnasium's "stick"), 1 ``hit``.

    ## Observation Space
    `Box(0, 255, (300, 300, 3), uint8)`: a green table with "Dealer" and the dealer's face-up card next to a
    face-down card, and "Player" with the player's cards (overlapping when there are many). When the episode
    ends the dealer's whole hand is shown face up.

    ## Rewards
    +1 for a win, −1 for a loss (including a bust), 0 for a draw; with ``natural=True`` a winning natural pays
    +1.5, and with ``sab=True`` a natural beats any dealer hand but a natural (both as in gymnasium).

    ## Episode End
    - Termination: the player stands, or hits and busts.
    - Truncation: never (an episode lasts at most a handful of hits).

    ## Information
    ``player_cards`` (labels, e.g. ``["K", "7"]``), ``player_suits``, ``player_sum``, ``usable_ace`` (bool),
    ``dealer_card`` (label of the face-up card), ``dealer_suit``, ``dealer_value`` (1-10, 1 = ace, gymnasium's
    observation), ``is_success`` (the episode was won); when the episode ends also ``dealer_cards``,
    ``dealer_suits`` and ``dealer_sum``.

    ## Arguments
    - ``render_mode`` (default ``"rgb_array"``): the only render mode; `render` returns the current frame.
    - ``natural`` (default `False`), ``sab`` (default `False`): gymnasium's arguments of the same names.

    ## Version History
    - v0: gymnasium ``Blackjack-v1`` rules and draw order, drawn as cards with Pillow; suits and face labels of
      cards gymnasium does not draw come from `cosmetic_rng`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    ACTION_NAMES = ("stand", "hit")

    def __init__(self, render_mode: str | None = "rgb_array", natural: bool = False, sab: bool = False):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Unsupported render_mode {render_mode!r}; the only render mode is 'rgb_array'.")
        self.render_mode = render_mode
        self.natural = bool(natural)
        self.sab = bool(sab)
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
        self.dealer: list[int] = []
        self.player: list[int] = []
        self._dealer_looks: list[tuple[str, str]] = []
        self._player_looks: list[tuple[str, str]] = []
        self._looks = np.random.default_rng(0)
        self._done = False
        self._frame = np.zeros(self.observation_space.shape, np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # Gymnasium's draw order: dealer's two cards, player's two, the up card's suit, then J/Q/K for a ten.
        self.dealer = [draw_value(self.np_random), draw_value(self.np_random)]
        self.player = [draw_value(self.np_random), draw_value(self.np_random)]
        up_suit = _GYMNASIUM_SUITS[str(self.np_random.choice(["C", "D", "H", "S"]))]
        if self.dealer[0] == 1:
            up_label = "A"
        elif self.dealer[0] == 10:
            up_label = str(self.np_random.choice(["J", "Q", "K"]))
        else:
            up_label = str(self.dealer[0])
        self._looks = cosmetic_rng(self.np_random)
        self._player_looks = [card_look(v, self._looks) for v in self.player]
        self._dealer_looks = [(up_label, up_suit), card_look(self.dealer[1], self._looks)]
        self._done = False
        self._frame = self._draw_frame()
        return self._frame.copy(), self._get_info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"Invalid action {action!r}; expected 0 ('stand') or 1 ('hit').")
        if action:  # hit
            self.player.append(draw_value(self.np_random))
            self._player_looks.append(card_look(self.player[-1], self._looks))
            terminated = hand_sum(self.player) > 21
            reward = -1.0 if terminated else 0.0
        else:  # stand: the dealer plays out their hand
            terminated = True
            while hand_sum(self.dealer) < 17:
                self.dealer.append(draw_value(self.np_random))
                self._dealer_looks.append(card_look(self.dealer[-1], self._looks))
            player, dealer = score(self.player), score(self.dealer)
            reward = float(player > dealer) - float(player < dealer)
            if self.sab and is_natural(self.player) and not is_natural(self.dealer):
                reward = 1.0
            elif not self.sab and self.natural and is_natural(self.player) and reward == 1.0:
                reward = 1.5
        self._done = terminated
        self._frame = self._draw_frame()
        info = self._get_info()
        info["is_success"] = bool(terminated and reward > 0)
        return self._frame.copy(), reward, terminated, False, info

    def _get_info(self) -> dict:
        info = {
            "player_cards": [label for label, _ in self._player_looks],
            "player_suits": [suit for _, suit in self._player_looks],
            "player_sum": hand_sum(self.player),
            "usable_ace": usable_ace(self.player),
            "dealer_card": self._dealer_looks[0][0],
            "dealer_suit": self._dealer_looks[0][1],
            "dealer_value": self.dealer[0],
            "is_success": False,
        }
        if self._done:
            info["dealer_cards"] = [label for label, _ in self._dealer_looks]
            info["dealer_suits"] = [suit for _, suit in self._dealer_looks]
            info["dealer_sum"] = hand_sum(self.dealer)
        return info

    def _draw_frame(self) -> np.ndarray:
        image = _empty_table().copy()
        if self._done:
            _draw_row(image, self._dealer_looks, top=36)
        else:  # the up card and the hole card, face down
            _draw_row(image, [*self._dealer_looks[:1], (None, None)], top=36)
        _draw_row(image, self._player_looks, top=178)
        return np.array(image, dtype=np.uint8)

    def render(self):
        """The current frame (H×W×3 uint8)."""
        return self._frame.copy()


@functools.lru_cache(maxsize=1)
def _empty_table() -> Image.Image:
    """The green table with the "Dealer" and "Player" labels (drawn once)."""
    image = Image.new("RGB", (FRAME_SIZE, FRAME_SIZE), TABLE_GREEN)
    draw = ImageDraw.Draw(image)
    draw.text((12, 8), "Dealer", font=font(20), fill="white")
    draw.text((12, 150), "Player", font=font(20), fill="white")
    return image


def _draw_row(image: Image.Image, looks: list[tuple[str | None, str | None]], top: int) -> None:
    """Cards left to right from x=12; they overlap (each still showing its corner) when they do not fit."""
    available = FRAME_SIZE - 24 - CARD_W
    step = CARD_W + 8 if len(looks) <= 1 else min(CARD_W + 8, available / (len(looks) - 1))
    for i, (label, suit) in enumerate(looks):
        left = int(12 + i * step)
        paste_card(image, (left, top, left + CARD_W, top + CARD_H), label, suit)
