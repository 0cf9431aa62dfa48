"""TextWorld text adventures as gymnasium envs: the observation is the game's text, the action a text command.

`TextWorldEnv` plays games made by TextWorld (Côté et al., 2018; ``pip install 'vlm-env-ppo[textworld]'``): a
compiled ``.z8`` file with the ``.json`` TextWorld writes beside it. `make_textworld_games` makes such games offline
with TextWorld's own generator; the wheel ships the Inform 7 compiler it needs, so no network is used.

```python
from vlm_env_ppo.envs.textworld_env import TextWorldEnv, make_textworld_games

files = make_textworld_games("tw_games", num_games=4, seed=0)  # ~1 s per game; made once, then found on disk
env = TextWorldEnv(game_files=files)  # or gym.make("vlm_env_ppo/TextWorld-v0", game_files=files)
text, info = env.reset(seed=0)  # text: the objective and the first room
info["admissible_commands"]  # ['examine table', 'go south', 'inventory', 'look']
text, reward, terminated, truncated, info = env.step(info["policy_commands"][0])
```

Text for the spaces: observations and commands are `gymnasium.spaces.Text` over printable ASCII plus newline and tab
(`TEXT_CHARSET`); game text outside it is transliterated (`clean_text`), so observations always lie in the space. In a
`gymnasium.vector.SyncVectorEnv` a batch of observations is a tuple of ``str``, and the batched action is any
sequence of ``str`` (a list or a tuple), one command per env.
"""

from __future__ import annotations

import glob
import os
import re
import unicodedata
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Printable ASCII, newline and tab: the characters of TextWorld and ALFWorld text (the same set as the VLM adapter's
# text space, so a text env and its adapted form agree).
TEXT_CHARSET = frozenset(map(chr, range(32, 127))) | {"\n", "\t"}
MAX_OBSERVATION_LENGTH = 1 << 16
MAX_COMMAND_LENGTH = 1024
# Jericho (the Z-machine interpreter TextWorld uses) reads fewer than 198 bytes per command and warns on longer ones.
MAX_INTERPRETER_COMMAND_LENGTH = 190

# Interpreter commands that act on the game session, not on the world: RESTART/RESTORE/UNDO would rewind the game
# behind the env's back (a restart drops the score the rewards were computed from), QUIT stops it, SAVE/SCRIPT write
# files. TextWorld's own debugging verbs (``tw-...``, e.g. ``tw-extra-infos description``, which makes every later
# answer carry the room description) are not the player's either. They are answered without being sent to the game.
META_COMMANDS = frozenset({"quit", "q", "restart", "restore", "save", "undo", "script", "transcript", "unscript"})
META_FEEDBACK = "That command is not available in this game."


def is_meta_command(command: str) -> bool:
    """Whether ``command`` (one normalized line) is an interpreter command (`META_COMMANDS`) or a TextWorld ``tw-``
    debugging verb rather than a move in the game."""
    verb = command.lower().split(" ", 1)[0]
    return verb in META_COMMANDS or verb.startswith("tw-")


def text_space(max_length: int) -> spaces.Text:
    """A `gymnasium.spaces.Text` of 0 to ``max_length`` characters of `TEXT_CHARSET`."""
    return spaces.Text(max_length=max_length, min_length=0, charset=TEXT_CHARSET)


def clean_text(text: str, max_length: int = MAX_OBSERVATION_LENGTH) -> str:
    """``text`` inside `text_space(max_length)`: CRLF to LF, accents stripped (NFKD), other characters outside
    `TEXT_CHARSET` replaced by ``?``, cut to ``max_length``."""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    if not all(char in TEXT_CHARSET for char in text):
        text = unicodedata.normalize("NFKD", text)
        text = "".join(char if char in TEXT_CHARSET else ("" if unicodedata.combining(char) else "?") for char in text)
    return text[:max_length]


def normalize_command(command) -> str:
    """One command line: ``str(command)`` with every run of whitespace (newlines included) made one space, backslashes
    dropped, stripped and cut to `MAX_COMMAND_LENGTH`.

    A newline would reach the interpreter as a second command, and a backslash starts one of dumb-frotz's own
    escape commands (``\\q``, ``\\help``, ...), not a game command.
    """
    return clean_text(" ".join(str(command).replace("\\", " ").split()), MAX_COMMAND_LENGTH)


_BANNER_LINE = re.compile(r"^[ _|\\/$<>]*$")


def strip_banner(text: str) -> str:
    """``text`` without the ASCII-art title TextWorld prints when a game starts (its leading lines made only of
    ``_|\\/$<>`` and spaces); other text is returned unchanged."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and _BANNER_LINE.match(lines[start]):
        start += 1
    if not any(lines[i].strip() for i in range(start)):  # no banner, only blank lines: keep the text as it was
        return text
    return "\n".join(lines[start:])


@contextmanager
def _quiet_interpreter():
    """Silence Jericho's warning that it cannot list valid actions for a TextWorld game: it is raised on every step
    (TextWorld games carry no Jericho bindings) although TextWorld itself gives the admissible commands."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unable to find valid actions in an unsupported game")
        yield


def _require_textworld():
    try:
        import textworld
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TextWorld games need the `textworld` package: `pip install 'vlm-env-ppo[textworld]'` "
            "(or `pip install textworld`)."
        ) from error
    return textworld


def make_textworld_games(
    out_dir: str | os.PathLike,
    num_games: int,
    seed: int = 0,
    *,
    world_size: int = 2,
    nb_objects: int = 4,
    quest_length: int = 2,
    theme: str = "house",
    max_attempts: int = 10,
) -> list[str]:
    """Make ``num_games`` small TextWorld games in ``out_dir`` with TextWorld's generator (offline) and return the
    paths of their ``.z8`` files, in order.

    Args:
        out_dir: where the games go (created if needed). Each game is a ``.z8`` file and its ``.json``, named by
            TextWorld's id for the game's options and seeds, so calling again with the same arguments finds the
            games already there and does not compile them again.
        num_games: how many games.
        seed: the seed of the whole set; game ``i``'s seeds are drawn from ``numpy.random.default_rng(seed)``.
        world_size: rooms per game (``tw-make custom --world-size``).
        nb_objects: at least this many objects per game (``--nb-objects``).
        quest_length: the number of actions the quest takes (``--quest-length``).
        theme: the text grammar's theme (``--theme``).
        max_attempts: a seed whose world has no quest of that length is replaced by the next one, up to this many
            times per game.

    Compiling takes about a second per game (the Inform 7 compiler ships in the ``textworld`` wheel).
    """
    textworld = _require_textworld()
    from textworld.generator import QuestGenerationError

    if num_games < 1:
        raise ValueError(f"`num_games` must be >= 1, got {num_games}.")
    if world_size < 1 or quest_length < 1 or nb_objects < 0:
        raise ValueError(
            f"Need world_size >= 1, quest_length >= 1 and nb_objects >= 0, got {world_size}, {quest_length}, "
            f"{nb_objects}."
        )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    game_files = []
    for index in range(num_games):
        error = None
        for _ in range(max_attempts):
            options = textworld.GameOptions()
            options.seeds = int(rng.integers(0, 2**31 - 1))
            options.nb_rooms = world_size
            options.nb_objects = nb_objects
            options.quest_length = quest_length
            options.grammar.theme = theme
            options.path = out_dir + os.sep  # a folder: the file is named by the game's id
            options.file_ext = ".z8"
            cached = os.path.join(out_dir, options.uuid + ".z8")
            if os.path.isfile(cached) and os.path.isfile(os.path.join(out_dir, options.uuid + ".json")):
                game_files.append(os.path.abspath(cached))  # made before with the same options and seeds
                break
            try:
                game_file, _ = textworld.make(options)
            except QuestGenerationError as exc:
                error = exc
                continue
            game_files.append(os.path.abspath(game_file))
            break
        else:
            raise RuntimeError(
                f"TextWorld found no quest of length {quest_length} in {max_attempts} worlds of {world_size} rooms "
                f"(game {index}); try a larger `world_size` or `nb_objects`, or a shorter `quest_length`."
            ) from error
    return game_files


def find_textworld_games(games_dir: str | os.PathLike) -> list[str]:
    """The TextWorld games in ``games_dir`` (its ``*.z8`` files that have their ``.json``), sorted by path."""
    paths = sorted(glob.glob(os.path.join(os.fspath(games_dir), "*.z8")))
    return [os.path.abspath(path) for path in paths if os.path.isfile(os.path.splitext(path)[0] + ".json")]


def choose_game_file(game_files: Sequence[str], options: dict | None, index: int) -> str:
    """The game a text env's ``reset`` plays: ``options["game_file"]`` (one of ``game_files``), else
    ``options["game_index"]``, else ``game_files[index]`` (drawn by the caller from its ``np_random``)."""
    options = options or {}
    if options.get("game_file") is not None:
        game_file = os.path.abspath(os.fspath(options["game_file"]))
        if game_file not in game_files:
            raise ValueError(f"`options['game_file']` {game_file!r} is not one of this env's `game_files`.")
        return game_file
    if options.get("game_index") is not None:
        return game_files[int(options["game_index"])]
    return game_files[index]


class TextWorldEnv(gym.Env):
    """
    ## Description
    A text adventure made by TextWorld (Côté et al., "TextWorld: A Learning Environment for Text-based Games", 2018):
    the agent reads the game's text ("-= Kitchen =- You are in a kitchen ...") and types commands ("open fridge",
    "take apple from counter") to complete the game's quest. Each reset picks a game from ``game_files`` with
    ``self.np_random``, so ``reset(seed=...)`` chooses the same game and the same run every time.

    ## Action Space
    `Text(0, 1024)` over `TEXT_CHARSET`: one command. Any string is accepted: it is reduced to one line
    (`normalize_command`) of at most 190 characters (the interpreter's limit); a command the game does not understand gets the game's own answer ("That's not a verb I
    recognise."), counts as a step and is flagged in ``info["action_admissible"]``. Interpreter commands
    (`META_COMMANDS`: quit, restart, undo, ...) and TextWorld's ``tw-`` debugging verbs are not sent to the game
    (`is_meta_command`).

    ## Observation Space
    `Text(0, 65536)` over `TEXT_CHARSET`: the game's answer to the last command (at reset, the game's introduction:
    the objective and the first room; TextWorld's ASCII-art title is removed when ``strip_banner``).

    ## Rewards
    The increase of the game's score (TextWorld gives a point for each quest milestone; the whole quest is
    ``info["max_score"]`` points).

    ## Episode End
    - Termination: the game is won or lost.
    - Truncation: ``max_episode_steps`` steps without either.

    ## Information
    At reset and every step: ``admissible_commands`` (`list[str]`, the commands TextWorld knows to be meaningful
    now), ``policy_commands`` (`list[str]`, a winning sequence of commands from here), ``is_success`` (won),
    ``won``, ``lost``, ``score``, ``max_score``, ``moves``, ``objective`` and ``task_description`` (the quest in
    words), ``game_file``, ``action_admissible`` (the last command was one of the admissible ones; `True` at reset),
    plus any of ``extra_infos``.

    ## Arguments
    - ``game_files``: paths of TextWorld ``.z8`` games (each with its ``.json``), or
    - ``games_dir``: a folder of them (`find_textworld_games`).
    - ``max_episode_steps`` (default 50): the step limit (truncation).
    - ``render_mode`` (default None): ``"ansi"`` makes `render` return the last observation; there are no frames.
    - ``strip_banner`` (default True): remove TextWorld's title art from the first observation.
    - ``extra_infos`` (default ``()``): more `textworld.EnvInfos` fields to put into ``info``, e.g.
      ``("description", "inventory")``.

    ``reset(options={"game_file": path})`` or ``reset(options={"game_index": i})`` plays a given game (the random
    draw still happens, so the generator's stream does not depend on options).

    ## Version History
    - v0: TextWorld 1.7 games (``.z8`` + ``.json``), score-increase rewards, seeded game choice.
    """

    metadata: ClassVar[dict] = {"render_modes": ["ansi"], "render_fps": 4}
    BASE_INFOS = ("admissible_commands", "policy_commands", "won", "lost", "score", "max_score", "moves", "objective")

    def __init__(
        self,
        game_files: Sequence[str] | str | None = None,
        games_dir: str | os.PathLike | None = None,
        max_episode_steps: int = 50,
        render_mode: str | None = None,
        strip_banner: bool = True,
        extra_infos: Sequence[str] = (),
    ):
        textworld = _require_textworld()
        if render_mode not in (None, "ansi"):
            raise ValueError(
                f"Unsupported render_mode {render_mode!r}: TextWorld games have no frames; use None or 'ansi'."
            )
        if (game_files is None) == (games_dir is None):
            raise ValueError(
                "Pass exactly one of `game_files` (paths of .z8 games) and `games_dir` (a folder of them)."
            )
        if isinstance(game_files, (str, os.PathLike)):
            game_files = [game_files]
        files = list(map(os.fspath, game_files)) if game_files is not None else find_textworld_games(games_dir)
        if not files:
            raise ValueError(
                f"No TextWorld games in {os.fspath(games_dir)!r}: make some with `make_textworld_games(out_dir, ...)` "
                "or `tw-make`."
            )
        for path in files:
            if not path.endswith(".z8") or not os.path.isfile(path):
                raise ValueError(f"{path!r} is not a .z8 game file (TextWorld 1.7 compiles games to .z8).")
            if not os.path.isfile(os.path.splitext(path)[0] + ".json"):
                raise ValueError(
                    f"{path!r} has no {os.path.splitext(os.path.basename(path))[0]}.json beside it: TextWorldEnv plays "
                    "games made by TextWorld, whose .json gives the admissible commands and the quest."
                )
        if int(max_episode_steps) < 1:
            raise ValueError(f"`max_episode_steps` must be >= 1, got {max_episode_steps}.")
        unknown = set(extra_infos) - set(textworld.EnvInfos.__slots__)
        if unknown:
            raise ValueError(f"Unknown `extra_infos` {sorted(unknown)}; choose from {textworld.EnvInfos.__slots__}.")
        self.game_files = tuple(os.path.abspath(path) for path in files)
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode
        self.strip_banner = bool(strip_banner)
        self.extra_infos = tuple(extra_infos)
        self.request_infos = textworld.EnvInfos(**{name: True for name in self.BASE_INFOS + self.extra_infos})
        self.observation_space = text_space(MAX_OBSERVATION_LENGTH)
        self.action_space = text_space(MAX_COMMAND_LENGTH)
        self._game = None  # the textworld environment, built on the first reset
        self._game_file: str | None = None
        self._state = None
        self._observation = ""
        self._score = 0
        self._steps = 0
        self._done = True

    def _load(self, game_file: str) -> None:
        if self._game is None:
            textworld = _require_textworld()
            self._game = textworld.start(game_file, self.request_infos)
        elif game_file != self._game_file:
            self._game.load(game_file)
        self._game_file = game_file

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = int(self.np_random.integers(len(self.game_files)))
        interpreter_seed = int(self.np_random.integers(0, 2**31 - 1))
        game_file = choose_game_file(self.game_files, options, index)
        with _quiet_interpreter():
            self._load(game_file)
            self._game.seed(interpreter_seed)
            self._state = self._game.reset()
        self._score = int(self._state.get("score") or 0)
        self._steps = 0
        self._done = False
        text = self._state.feedback or ""
        self._observation = clean_text(strip_banner(text) if self.strip_banner else text)
        return self._observation, self._get_info(action_admissible=True)

    def step(self, action):
        if self._state is None:
            raise RuntimeError("Call reset() before step().")
        command = normalize_command(action)[:MAX_INTERPRETER_COMMAND_LENGTH].strip()
        if self._done:  # the game is over: nothing more happens until the next reset
            info = self._get_info(action_admissible=False)
            return self._observation, 0.0, True, False, info
        admissible = command in self._state.get("admissible_commands", ())
        self._steps += 1
        if is_meta_command(command):
            self._observation = META_FEEDBACK
            admissible = False
        else:
            with _quiet_interpreter():
                self._state, _, _ = self._game.step(command)
            self._observation = clean_text(self._state.feedback or "")
        score = int(self._state.get("score") or 0)
        reward = float(score - self._score)
        self._score = score
        terminated = bool(self._state.get("won") or self._state.get("lost"))
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._done = terminated
        return self._observation, reward, terminated, truncated, self._get_info(action_admissible=admissible)

    def _get_info(self, action_admissible: bool) -> dict:
        state = self._state
        objective = clean_text(state.get("objective") or "")
        won = bool(state.get("won"))
        info = {
            "admissible_commands": [clean_text(c, MAX_COMMAND_LENGTH) for c in state.get("admissible_commands") or []],
            "policy_commands": list(state.get("policy_commands") or []),
            "is_success": won,
            "won": won,
            "lost": bool(state.get("lost")),
            "score": self._score,
            "max_score": int(state.get("max_score") or 0),
            "moves": int(state.get("moves") or 0),
            "objective": objective,
            "task_description": objective,
            "game_file": self._game_file,
            "action_admissible": bool(action_admissible),
        }
        for name in self.extra_infos:
            value = state.get(name)
            info[name] = clean_text(value) if isinstance(value, str) else value
        return info

    def render(self):
        """The last observation (``render_mode="ansi"``); None otherwise."""
        if self.render_mode == "ansi":
            return self._observation
        return None

    def close(self):
        if self._game is not None:
            self._game.close()
            self._game = None
            self._game_file = None
        super().close()
