"""Sokoban levels: the random generator every published VLM-agent Sokoban uses, and an exact solver.

The generator follows the method of DeepMind's "Imagination-Augmented Agents" (Weber et al., 2017), which the
gym-sokoban package implemented and verl-agent, VAGEN, RAGEN and ROLL all call: carve a random room topology with a
random walk, put the targets and the player on random floor cells with every box on its target (the solved state),
then play *backwards* from there — the player walks and pulls boxes off their targets — and keep the hardest state
reachable within ``search_depth`` reverse moves as the start. Every pull is the reverse of a push, so every level
is solvable by construction. Written here from that description (gym-sokoban is unmaintained and built on the old
gym API); all randomness comes from the ``np_random`` generator passed in.

Positions are ``(row, column)``; a level's ``walls`` is an ``(rows, cols)`` bool array. `solve` is a breadth-first
search over (player, boxes) states: the shortest solution in moves (walks and pushes alike).

```python
>>> import numpy as np
>>> level = generate_level(np.random.default_rng(0))
>>> solution = solve(level)
>>> len(solution) > 0, set(solution) <= set(DIRECTIONS)
(True, True)

```
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

# Actions, in the env's index order (``Discrete(4)``: 0 up, 1 down, 2 left, 3 right).
DIRECTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
DIRECTION_NAMES = tuple(DIRECTIONS)
_DELTAS = tuple(DIRECTIONS.values())

Cell = tuple[int, int]


@dataclass(frozen=True)
class Level:
    """A Sokoban position: the fixed room (``walls``, ``targets``) and the moving parts (``boxes``, ``player``)."""

    walls: np.ndarray  # (rows, cols) bool: True where a wall is
    targets: tuple[Cell, ...]
    boxes: tuple[Cell, ...]  # sorted
    player: Cell

    @property
    def solved(self) -> bool:
        return set(self.boxes) == set(self.targets)


def _add(cell: Cell, delta: tuple[int, int], k: int = 1) -> Cell:
    return cell[0] + k * delta[0], cell[1] + k * delta[1]


def random_topology(np_random: np.random.Generator, dim_room: tuple[int, int], num_steps: int) -> np.ndarray:
    """Walls of a random room: a random walk of ``num_steps`` steps through the interior (the outer ring stays wall),
    turning with probability 0.35 at each step and clearing the cell it stands on plus, half of the time, one
    neighbour (so the rooms are not all one cell wide). Returns the ``(rows, cols)`` wall mask."""
    rows, cols = dim_room
    floor = np.zeros(dim_room, dtype=bool)
    cell = (int(np_random.integers(1, rows - 1)), int(np_random.integers(1, cols - 1)))
    delta = _DELTAS[int(np_random.integers(4))]
    for _ in range(num_steps):
        if np_random.random() < 0.35:
            delta = _DELTAS[int(np_random.integers(4))]
        nxt = _add(cell, delta)
        if 1 <= nxt[0] < rows - 1 and 1 <= nxt[1] < cols - 1:
            cell = nxt
        floor[cell] = True
        if np_random.random() < 0.5:
            side = _add(cell, _DELTAS[int(np_random.integers(4))])
            if 1 <= side[0] < rows - 1 and 1 <= side[1] < cols - 1:
                floor[side] = True
    return ~floor


def _score(boxes: tuple[Cell, ...], targets: tuple[Cell, ...], swaps: int) -> int:
    """How hard a reverse-play state is as a start: box switches times the boxes' total distance from their targets
    (gym-sokoban's room score); 0 when every box is still on its own target."""
    displacement = sum(abs(b[0] - t[0]) + abs(b[1] - t[1]) for b, t in zip(boxes, targets))
    return swaps * displacement


def reverse_play(
    np_random: np.random.Generator, walls: np.ndarray, targets: tuple[Cell, ...], player: Cell, search_depth: int,
    max_states: int = 200_000,
) -> Level | None:
    """Play backwards from the solved state (every box on its target, the player at ``player``): every state
    reachable in at most ``search_depth`` reverse moves (a walk, or a walk that pulls the box behind the player),
    explored breadth-first up to ``max_states`` states. Returns the start with the highest `_score` (ties broken
    with ``np_random``), or `None` when no pull is possible."""
    start = (player, targets, -1, 0)  # player, boxes (in target order), last pulled box, box switches
    seen = {start[:3]}
    frontier, best, best_score = [start], [], 0
    for _ in range(search_depth):
        nxt = []
        for p, boxes, last, swaps in frontier:
            for delta in _DELTAS:
                q = _add(p, delta)
                if walls[q] or q in boxes:
                    continue
                behind = _add(p, delta, -1)
                options = [(q, boxes, last, swaps)]
                if behind in boxes:  # pull it along: the box moves onto the player's old cell
                    k = boxes.index(behind)
                    pulled = boxes[:k] + (p,) + boxes[k + 1 :]
                    options.append((q, pulled, k, swaps + (k != last)))
                for state in options:
                    if state[:3] in seen or len(seen) >= max_states:
                        continue
                    seen.add(state[:3])
                    nxt.append(state)
                    score = _score(state[1], targets, state[3])
                    if score > best_score:
                        best, best_score = [state], score
                    elif score == best_score and score > 0:
                        best.append(state)
        frontier = nxt
        if not frontier:
            break
    if not best:
        return None
    p, boxes, _, _ = best[int(np_random.integers(len(best)))]
    return Level(walls=walls, targets=tuple(sorted(targets)), boxes=tuple(sorted(boxes)), player=p)


def generate_level(
    np_random: np.random.Generator, dim_room: tuple[int, int] = (6, 6), num_boxes: int = 1, search_depth: int = 30,
    num_steps: int | None = None, max_tries: int = 100,
) -> Level:
    """A random solvable level (the standard generator, see the module docstring).

    Args:
        np_random: the only source of randomness (the env passes its ``self.np_random``).
        dim_room: ``(rows, cols)`` including the outer wall ring (at least 3x4 or 4x3).
        num_boxes: boxes (and targets).
        search_depth: reverse moves explored from the solved state; deeper finds harder starts.
        num_steps: random-walk steps of the topology; default ``1.7 * (rows + cols)`` as gym-sokoban.
        max_tries: rooms to try before giving up (a room too small for its boxes, or one where nothing can be
            pulled, is drawn again).

    Raises:
        `RuntimeError`: no level in ``max_tries`` rooms (the room is too small for ``num_boxes``).
    """
    rows, cols = dim_room
    steps = int(1.7 * (rows + cols)) if num_steps is None else num_steps
    for _ in range(max_tries):
        walls = random_topology(np_random, dim_room, steps)
        floor = [tuple(int(x) for x in c) for c in np.argwhere(~walls)]
        if len(floor) < num_boxes + 2:
            continue
        picks = np_random.permutation(len(floor))[: num_boxes + 1]
        targets = tuple(floor[i] for i in picks[:num_boxes])
        level = reverse_play(np_random, walls, targets, floor[picks[-1]], search_depth)
        if level is not None:
            return level
    raise RuntimeError(
        f"No solvable Sokoban level with {num_boxes} box(es) in a {rows}x{cols} room after {max_tries} rooms: use a "
        "larger dim_room or fewer boxes."
    )


def move(level: Level, action: int) -> tuple[Level, int, int]:
    """Play ``action`` (an index into `DIRECTION_NAMES`): the player walks one cell, pushing a box in the way if the
    cell behind it is free. Returns ``(next level, boxes pushed onto a target, boxes pushed off a target)``; a move
    into a wall or an immovable box leaves the level as it was."""
    delta = _DELTAS[int(action)]
    q = _add(level.player, delta)
    if level.walls[q]:
        return level, 0, 0
    boxes = level.boxes
    if q in boxes:
        beyond = _add(q, delta)
        if level.walls[beyond] or beyond in boxes:
            return level, 0, 0
        boxes = tuple(sorted(b if b != q else beyond for b in boxes))
        on = int(beyond in level.targets)
        off = int(q in level.targets)
        return Level(level.walls, level.targets, boxes, q), on, off
    return Level(level.walls, level.targets, boxes, q), 0, 0


def solve(level: Level, max_states: int = 500_000) -> list[int] | None:
    """A shortest solution (fewest moves, walks and pushes alike) as action indices, by breadth-first search over
    (player, boxes); ``[]`` for a solved level, `None` when none exists within ``max_states`` states."""
    if level.solved:
        return []
    start = (level.player, level.boxes)
    parents: dict = {start: None}
    queue = deque([level])
    while queue:
        current = queue.popleft()
        for action in range(4):
            nxt, _, _ = move(current, action)
            key = (nxt.player, nxt.boxes)
            if key in parents:
                continue
            parents[key] = ((current.player, current.boxes), action)
            if nxt.solved:
                path = []
                while parents[key] is not None:
                    key, a = parents[key]
                    path.append(a)
                return path[::-1]
            if len(parents) >= max_states:
                return None
            queue.append(nxt)
    return None


# The text-only systems' symbols (gym-sokoban's room states as RAGEN/VAGEN/verl-agent print them).
SYMBOLS = {"wall": "#", "floor": "_", "target": "O", "box_on_target": "√", "box": "X", "player": "P",
           "player_on_target": "S"}


def grid_text(level: Level) -> str:
    """The level as rows of symbols (`SYMBOLS`: ``#`` wall, ``_`` floor, ``O`` target, ``X`` box, ``√`` box on
    target, ``P`` player, ``S`` player on target), one line per row."""
    rows = []
    targets, boxes = set(level.targets), set(level.boxes)
    for r in range(level.walls.shape[0]):
        line = []
        for c in range(level.walls.shape[1]):
            cell = (r, c)
            if level.walls[cell]:
                line.append(SYMBOLS["wall"])
            elif cell == level.player:
                line.append(SYMBOLS["player_on_target" if cell in targets else "player"])
            elif cell in boxes:
                line.append(SYMBOLS["box_on_target" if cell in targets else "box"])
            else:
                line.append(SYMBOLS["target" if cell in targets else "floor"])
        rows.append("".join(line))
    return "\n".join(rows)


def parse_grid(text: str) -> Level:
    """The inverse of `grid_text` (for hand-built rooms in tests and user levels). Raises `ValueError` on unknown
    symbols, ragged rows, or not exactly one player."""
    lines = [line for line in text.strip().splitlines()]
    if not lines or len({len(line) for line in lines}) != 1:
        raise ValueError(f"A Sokoban grid needs equal-length rows, got {lines!r}.")
    walls = np.zeros((len(lines), len(lines[0])), dtype=bool)
    targets, boxes, players = [], [], []
    for r, line in enumerate(lines):
        for c, ch in enumerate(line):
            if ch not in SYMBOLS.values():
                raise ValueError(f"Unknown Sokoban symbol {ch!r} at row {r}, column {c}; known: {set(SYMBOLS.values())}.")
            walls[r, c] = ch == "#"
            if ch in "O√S":
                targets.append((r, c))
            if ch in "X√":
                boxes.append((r, c))
            if ch in "PS":
                players.append((r, c))
    if len(players) != 1 or len(boxes) != len(targets) or not boxes:
        raise ValueError(f"A Sokoban grid needs one player and as many boxes as targets (at least one), got {text!r}.")
    if not (walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()):
        raise ValueError("A Sokoban grid must be closed by walls on all four sides.")
    return Level(walls=walls, targets=tuple(sorted(targets)), boxes=tuple(sorted(boxes)), player=players[0])
