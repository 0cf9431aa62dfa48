"""Playing cards for the gym_cards envs: rank labels, suits, and drawing with Pillow (no image assets).

Everything is drawn at run time with Pillow's bundled scalable font (``ImageFont.load_default(size=...)``, works
offline). That font has no glyphs for the suit symbols (♠♥♦♣ render as empty boxes), so suits are drawn as shapes:
polygons and ellipses, red for hearts and diamonds, black for spades and clubs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

TABLE_GREEN = (53, 101, 77)  # "#35654d", the felt colour of RL4VLM's gym_cards frames
CARD_WHITE = (250, 250, 246)
CARD_EDGE = (120, 120, 120)
CARD_BACK = (40, 70, 160)
RED = (200, 20, 30)
BLACK = (20, 20, 20)

SUITS = ("spades", "hearts", "diamonds", "clubs")
RANK_LABELS = {1: "A", 11: "J", 12: "Q", 13: "K", **{rank: str(rank) for rank in range(2, 11)}}
POINTS_OPERATORS = ("+", "-", "*", "/", "(", ")")


def rank_label(rank: int) -> str:
    """The printed label of a rank 1..13: ``"A"``, ``"2"`` ... ``"10"``, ``"J"``, ``"Q"``, ``"K"``."""
    return RANK_LABELS[int(rank)]


def card_value(rank: int, treat_face_cards_as_10: bool = True) -> int:
    """The number a card stands for in the points games: its rank, with J/Q/K counting 10 when asked (RL4VLM)."""
    return min(int(rank), 10) if treat_face_cards_as_10 else int(rank)


def points_action_names(max_number: int, operators: Sequence[str]) -> tuple[str, ...]:
    """Action names of a points game: the numbers ``"1"..str(max_number)``, the operators, then ``"="``."""
    return tuple(str(n) for n in range(1, max_number + 1)) + tuple(operators) + ("=",)


@functools.cache
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at ``size`` pixels (cached: loading it costs more than drawing a frame)."""
    return ImageFont.load_default(size=size)


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height in pixels of ``text`` drawn at ``size`` (from the ink bounding box)."""
    left, top, right, bottom = font(size).getbbox(text)
    return right - left, bottom - top


def draw_centered_text(draw: ImageDraw.ImageDraw, center: tuple[float, float], text: str, size: int, fill) -> None:
    """Draw ``text`` with its ink box centred on ``center``."""
    draw.text(center, text, font=font(size), fill=fill, anchor="mm")


def draw_suit(draw: ImageDraw.ImageDraw, center: tuple[float, float], size: float, suit: str) -> None:
    """Draw a suit symbol of height about ``size`` pixels centred on ``center`` (red hearts/diamonds, black others)."""
    x, y = center
    h = size / 2  # half height
    color = RED if suit in ("hearts", "diamonds") else BLACK
    if suit == "diamonds":
        draw.polygon([(x, y - h), (x + 0.72 * h, y), (x, y + h), (x - 0.72 * h, y)], fill=color)
    elif suit == "hearts":
        r = 0.5 * h
        draw.ellipse([x - 2 * r, y - h, x, y - h + 2 * r], fill=color)
        draw.ellipse([x, y - h, x + 2 * r, y - h + 2 * r], fill=color)
        draw.polygon([(x - 1.97 * r, y - h + 1.25 * r), (x + 1.97 * r, y - h + 1.25 * r), (x, y + h)], fill=color)
    elif suit == "spades":
        r = 0.45 * h
        lobe_top = y + 0.15 * h - r  # the two lobes sit low, the point goes up
        draw.ellipse([x - 2 * r, lobe_top, x, lobe_top + 2 * r], fill=color)
        draw.ellipse([x, lobe_top, x + 2 * r, lobe_top + 2 * r], fill=color)
        draw.polygon([(x - 1.97 * r, lobe_top + 0.75 * r), (x + 1.97 * r, lobe_top + 0.75 * r), (x, y - h)], fill=color)
        draw.polygon([(x, y + 0.1 * h), (x + 0.4 * h, y + h), (x - 0.4 * h, y + h)], fill=color)
    elif suit == "clubs":
        r = 0.36 * h
        for cx, cy in ((x, y - h + r), (x - 1.05 * r, y - h + 2.55 * r), (x + 1.05 * r, y - h + 2.55 * r)):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        draw.polygon([(x, y - 0.2 * h), (x + 0.4 * h, y + h), (x - 0.4 * h, y + h)], fill=color)
    else:
        raise ValueError(f"Unknown suit {suit!r}; expected one of {SUITS}.")


def draw_card(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], label: str, suit: str, line: int = 2) -> None:
    """Draw a face-up card in ``box`` (left, top, right, bottom): a white rounded rectangle with the rank in the
    top-left and bottom-right corners, a small suit under the top-left rank and a large suit in the middle."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    draw.rounded_rectangle(box, radius=max(3, width // 10), fill=CARD_WHITE, outline=CARD_EDGE, width=line)
    color = RED if suit in ("hearts", "diamonds") else BLACK
    rank_size = max(10, int(width * (0.3 if len(label) == 1 else 0.27)))
    corner = max(4, width // 14)
    draw.text((left + corner, top + corner), label, font=font(rank_size), fill=color, anchor="lt")
    label_w, _ = text_size(label, rank_size)
    draw_suit(draw, (left + corner + label_w / 2, top + corner + 1.45 * rank_size), 0.6 * rank_size, suit)
    draw.text((right - corner, bottom - corner), label, font=font(rank_size), fill=color, anchor="rb")
    draw_suit(draw, (left + width / 2, top + height / 2 + 0.03 * height), 0.42 * width, suit)


def draw_card_back(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], line: int = 2) -> None:
    """Draw a face-down card in ``box``: a white border around a blue back with a diagonal lattice."""
    left, top, right, bottom = box
    width = right - left
    draw.rounded_rectangle(box, radius=max(3, width // 10), fill=CARD_WHITE, outline=CARD_EDGE, width=line)
    inset = max(3, width // 12)
    inner = (left + inset, top + inset, right - inset, bottom - inset)
    draw.rectangle(inner, fill=CARD_BACK)
    step = max(6, width // 6)
    inner_w, inner_h = inner[2] - inner[0], inner[3] - inner[1]
    for offset in range(-inner_h, inner_w + 1, step):  # 45° lines, clipped to the inner box by hand
        for direction in (1, -1):
            x0 = inner[0] + offset if direction == 1 else inner[2] - offset
            t0 = max(0, (inner[0] - x0) if direction == 1 else (x0 - inner[2]))
            t1 = min(inner_h, (inner[2] - x0) if direction == 1 else (x0 - inner[0]))
            if t1 > t0:
                draw.line(
                    [(x0 + direction * t0, inner[1] + t0), (x0 + direction * t1, inner[1] + t1)],
                    fill=(90, 120, 200),
                    width=max(1, line // 2),
                )


SUPERSAMPLE = 4


@functools.lru_cache(maxsize=512)
def card_image(label: str | None, suit: str | None, width: int, height: int) -> Image.Image:
    """A card sprite (RGBA, transparent outside the rounded corners): face up, or face down when ``label`` is
    `None`. Drawn at `SUPERSAMPLE` times the size and scaled down, so the small corner suits stay distinct (a club's
    three lobes merged into a spade-like blob at 1×). Cached, so a frame is a few pastes instead of redrawing text and
    shapes every step."""
    s = SUPERSAMPLE
    image = Image.new("RGBA", (width * s, height * s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    box = (0, 0, width * s - 1, height * s - 1)
    if label is None:
        draw_card_back(draw, box, line=2 * s)
    else:
        draw_card(draw, box, label, suit, line=2 * s)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def paste_card(canvas: Image.Image, box: tuple[int, int, int, int], label: str | None, suit: str | None = None) -> None:
    """Paste a card (see `card_image`) into ``box`` of ``canvas``; ``label=None`` pastes a face-down card."""
    left, top, right, bottom = box
    sprite = card_image(label, suit, right - left, bottom - top)
    canvas.paste(sprite, (left, top), sprite)


def wrap_tokens(tokens: Sequence[str], size: int, max_width: int) -> list[str]:
    """Join ``tokens`` with spaces into lines no wider than ``max_width`` pixels at font ``size``."""
    lines: list[str] = []
    line = ""
    for token in tokens:
        candidate = f"{line} {token}" if line else str(token)
        if line and text_size(candidate, size)[0] > max_width:
            lines.append(line)
            line = str(token)
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines
