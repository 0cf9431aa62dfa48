"""Prompts, action vocabularies and output parsing for the environments: ``Task`` and its registry.

A `Task` holds what the trainer needs to talk to one env: the action names (in the env's index order), the prompt
that asks for a JSON answer — reasoning first, action last, ``{"thoughts": "...", "action": "+"}``, or the
action-only variant ``{"action": "+"}`` (the paper's no-CoT ablation) — and the parser that maps the answer back
to an action index. The four gym_cards tasks of RL4VLM are built in (prompts in the spirit of the paper's, rewritten).

For your own env, make a `Task` and pass it to the trainer (``VLMPPOTrainer(..., task=task)``) or register it:

```python
>>> from vlm_env_ppo.tasks import Task
>>> task = Task("MyMaze-v0", ("left", "right"), "You are in a maze. Find the exit.")
>>> print(task.example_answer("left", thoughts="The exit is on the left."))
{"thoughts": "The exit is on the left.", "action": "left"}
>>> task.parse_action('{"thoughts": "Not right: the exit is on the left.", "action": "left"}').action
0

```
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from .actions import ParsedAction, parse_action
from .envs.adapter import HISTORY, OBSERVATION_TEXT

DEFAULT_THOUGHTS_HINT = "describe what you see in the image, then think step by step about which action to take"


@dataclass(frozen=True)
class Task:
    """How to prompt for, and parse, the actions of one environment.

    Args:
        env_id (`str`):
            The env id, e.g. ``"gym_cards/NumberLine-v0"``; the key in the registry.
        action_names (`tuple[str, ...]` or `None`):
            The action names in the env's index order (``action_names[i]`` is env action ``i``). Any sequence of
            non-empty, distinct strings; stored as a tuple. `None` for an env with text actions whose legal commands
            change every step (give ``admissible_actions`` instead).
        description (`str`):
            The task introduction that opens the prompt: what the agent sees and what its goal is.
        info_text (`Callable[[dict], str]` or `None`, *optional*, defaults to `None`):
            Text state from the env's ``info`` to add to the prompt after the description (e.g. the formula typed so
            far). Called with the step's ``info`` dict (possibly empty); return ``""`` to add nothing.
        thoughts_hint (`str`, *optional*):
            What the ``"thoughts"`` field should contain; shown in the CoT prompt's JSON template.
        admissible_actions (`Callable[[dict], Sequence[str]]` or `None`, *optional*, defaults to `None`):
            The legal actions of the current step from its ``info`` (e.g. ``lambda info:
            info["admissible_commands"]`` for TextWorld/ALFWorld, or a subset of ``action_names`` such as MiniGrid's
            three movement actions). The prompt lists these, the parser accepts only these, and an invalid output's
            random fallback draws from these. With ``action_names`` too, names not in ``action_names`` are dropped.

    Parsed actions (`ParsedAction.action`) are indices into ``action_names``, or, for a task without them, into
    ``legal_actions(info)``; `to_env_action` turns one into what ``env.step`` takes. The text that an adapted env puts
    in ``info["observation_text"]`` (`vlm_env_ppo.envs.adapter`) is added to the prompt, and the earlier turns in
    ``info["history"]`` (`HistoryWrapper`) become earlier chat turns.

    Use `dataclasses.replace` to change one field of a built-in task, e.g. a different description.

    For your own prompt and answer format, subclass it and override `build_messages`, `parse_action` and
    `answer_grammar` (``examples/custom_env.py``). A saved agent records its task (the class's import path and these
    fields, `vlm_env_ppo.user_code`); `VLMAgent.from_pretrained` builds it again, importing a class or function from
    outside this package only with ``trust_remote_code=True``.
    """

    env_id: str
    action_names: tuple[str, ...] | None
    description: str
    info_text: Callable[[dict], str] | None = None
    thoughts_hint: str = DEFAULT_THOUGHTS_HINT
    admissible_actions: Callable[[dict], Sequence[str]] | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.action_names is None:
            if self.admissible_actions is None:
                raise ValueError(
                    "A Task needs `action_names` (one per env action, in index order) or `admissible_actions` (a "
                    "function from the step's info to its legal text commands)."
                )
            object.__setattr__(self, "_index", {})
            return
        names = tuple(self.action_names) if not isinstance(self.action_names, str) else None
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(
                f"`action_names` must be a non-empty sequence of non-empty strings (one per env action, in index "
                f"order), got {self.action_names!r}."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"`action_names` must be distinct, got {names!r}.")
        object.__setattr__(self, "action_names", names)
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(names)})

    def legal_actions(self, info: dict | None = None) -> tuple[str, ...]:
        """The actions legal in the step described by ``info``: ``admissible_actions(info)`` (distinct non-empty
        strings, in their order; those not in ``action_names`` dropped) or, without that function, ``action_names``.
        An empty admissible list falls back to ``action_names`` (``()`` for a task without them)."""
        if self.admissible_actions is None:
            return self.action_names
        raw = self.admissible_actions(info if isinstance(info, dict) else {})
        legal = tuple(dict.fromkeys(a for a in raw or () if isinstance(a, str) and a.strip()))
        if self.action_names is not None:
            legal = tuple(a for a in legal if a in self._index)
        return legal or (self.action_names or ())

    def action_name(self, index: int, info: dict | None = None) -> str:
        """The name of parsed action ``index`` (see the class docstring for what indices refer to)."""
        return (self.action_names or self.legal_actions(info))[index]

    def to_env_action(self, index: int, info: dict | None, action_space: spaces.Space):
        """What ``env.step`` takes for parsed action ``index``: the command string for a `Text` action space, else
        ``index + action_space.start`` (a `Discrete` action)."""
        if isinstance(action_space, spaces.Text):
            return self.action_name(index, info)
        return int(index) + int(getattr(action_space, "start", 0))

    def sample_action(self, info: dict | None, rng: np.random.Generator) -> int:
        """A uniformly random legal action (as a parsed-action index), e.g. the fallback for an invalid output."""
        legal = self.legal_actions(info)
        if not legal:
            raise ValueError(f"{self.env_id}: the env reported no legal action to fall back on (info: {info!r}).")
        k = int(rng.integers(len(legal)))
        return self._index[legal[k]] if self.action_names is not None else k

    def prompt(self, info: dict | None = None, action_only: bool = False) -> str:
        """The text prompt for one step: description, optional info text, legal actions and the answer format.

        Args:
            info (`dict` or `None`): the env's ``info`` for this step, passed to ``info_text``.
            action_only (`bool`): ask for ``{"action": ...}`` only (no reasoning) instead of thoughts then action.
        """
        info = info if isinstance(info, dict) else {}
        parts = [self.description.strip()]
        observation_text = info.get(OBSERVATION_TEXT)
        if isinstance(observation_text, str) and observation_text.strip():
            parts.append(observation_text.strip())
        if self.info_text is not None:
            state = self.info_text(info)
            if state:
                parts.append(state.strip())
        legal = list(self.legal_actions(info))
        parts.append(f"Choose exactly one action from {json.dumps(legal, ensure_ascii=False)}.")
        if action_only:
            template = '{"action": "<one of the actions above>"}'
            parts.append(f"Your response should be a valid JSON object in the following format:\n{template}")
        else:
            template = f'{{"thoughts": "<{self.thoughts_hint}>", "action": "<one of the actions above>"}}'
            parts.append(
                "Your response should be a valid JSON object in the following format, with your reasoning first "
                f"and the action last:\n{template}"
            )
        return "\n".join(parts)

    def build_messages(self, observation, info: dict | None = None, action_only: bool = False) -> list[dict]:
        """Chat messages for one step: the observation image (if it is one) followed by the prompt.

        Returns ``[{"role": "user", "content": [{"type": "image", "image": PIL.Image}, {"type": "text", "text":
        prompt}]}]``. A numpy frame (H×W×3 or H×W, uint8) or a PIL image becomes an RGB `PIL.Image.Image`; any other
        observation (e.g. a text, or `None`) gives a text-only message.

        With earlier turns in ``info["history"]`` (`vlm_env_ppo.envs.adapter.HistoryWrapper`), each comes first as
        a user message (its frame and text) and an assistant message with the action played, ``{"action": ...}``.
        """
        messages = []
        for turn in (info or {}).get(HISTORY) or ():
            content = []
            image = to_pil_image(turn.get("frame"))
            if image is not None:
                content.append({"type": "image", "image": image})
            text = str(turn.get("text") or "").strip()
            content.append({"type": "text", "text": f"Earlier observation: {text}" if text else "Earlier observation."})
            answer = json.dumps({"action": turn.get("action")}, ensure_ascii=False)
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        content = []
        image = to_pil_image(observation)
        if image is not None:
            content.append({"type": "image", "image": image})
        content.append({"type": "text", "text": self.prompt(info, action_only=action_only)})
        messages.append({"role": "user", "content": content})
        return messages

    def parse_action(self, completion: str, info: dict | None = None) -> ParsedAction:
        """Parse a completion into one of the step's legal actions (`vlm_env_ppo.actions.parse_action`); the index is
        into ``action_names`` (or, without them, ``legal_actions(info)``). Never raises (a raising
        ``admissible_actions`` is the trainer's to count)."""
        legal = self.legal_actions(info)
        parsed = parse_action(completion, legal)
        if parsed.valid and self.action_names is not None and legal is not self.action_names:
            return replace(parsed, action=self._index[legal[parsed.action]])
        return parsed

    def answer_grammar(self, info: dict | None, constraint, action_only: bool = False) -> str | None:
        """The grammar of this step's completion under constrained decoding, or `None` to leave the step unconstrained.

        Default: the JSON answer of `prompt` with one of ``legal_actions(info)`` (`GrammarConstraint.answer_grammar`).
        Override it together with `parse_action` for your own answer format: return any grammar llguidance compiles
        (Lark text, ``llguidance.LLMatcher.grammar_from_regex(...)``, ``grammar_from_json_schema(...)``) whose
        completions end with EOS within ``constraint.max_new_tokens`` (bound free text: ``rule[max_tokens=N]: /.../``).

        Args:
            info (`dict` or `None`): the step's ``info``.
            constraint (`vlm_env_ppo.constrained.GrammarConstraint`): the tokenizer's constraint (its
                ``max_new_tokens``, ``answer_grammar``).
            action_only (`bool`): the prompt variant.
        """
        return constraint.answer_grammar(self.legal_actions(info), action_only)

    def example_answer(self, action: str | int, thoughts: str | None = None, action_only: bool = False) -> str:
        """A correct answer in exactly the format the prompt asks for, e.g. for SFT data.

        Args:
            action (`str` or `int`): an action name, or its index.
            thoughts (`str` or `None`): the reasoning (CoT variant only); `None` gives an empty string.
            action_only (`bool`): produce ``{"action": ...}`` only.

        Example: ``{"thoughts": "The current number 2 is below the target 4.", "action": "+"}``.
        """
        if isinstance(action, int) and not isinstance(action, bool):
            if self.action_names is None or not 0 <= action < len(self.action_names):
                raise ValueError(f"Action index {action} is out of range for this task's fixed actions; pass a valid index or a name.")
            action = self.action_names[action]
        if self.action_names is not None and action not in self._index:
            raise ValueError(f"Unknown action {action!r} for {self.env_id}; legal actions: {list(self.action_names)}.")
        answer = {"action": action} if action_only else {"thoughts": thoughts or "", "action": action}
        return json.dumps(answer, ensure_ascii=False)


class UnknownTaskError(KeyError):
    """No `Task` is registered for an env id (a `KeyError`, as a registry lookup)."""

    def __str__(self) -> str:  # the message as written, not KeyError's quoted repr
        return str(self.args[0]) if self.args else ""


class UnknownEnvError(UnknownTaskError):
    """No gymnasium env is registered under an env id (a typo, or a package that registers it not imported)."""


def check_env_id(env_id: str) -> None:
    """Raise `UnknownEnvError` (gymnasium's message, with its "did you mean") when no env is registered as ``env_id``.
    Ids of the form ``"module:Env-v0"``, which `gymnasium.make` imports first, are left to it."""
    if ":" in env_id:
        return
    from .envs.adapter import _import_plugin

    try:
        _import_plugin(env_id)
        gym.spec(env_id)
    except (gym.error.Error, ImportError) as err:
        raise UnknownEnvError(f"No such env {env_id!r}: {err} (gymnasium's registry; a package that registers it "
                              "must be imported first, or use the id form 'module:Env-v0').") from None


def to_pil_image(observation) -> Image.Image | None:
    """An RGB PIL image from a PIL image or an image-like array (H×W, H×W×1, H×W×3, H×W×4); `None` otherwise."""
    if isinstance(observation, Image.Image):
        return observation.convert("RGB")
    if observation is None or isinstance(observation, (str, bytes, dict)):
        return None
    try:
        array = np.asarray(observation)
    except Exception:  # e.g. a ragged sequence: not an image
        return None
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))) or 0 in array.shape:
        return None
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if array.dtype == np.bool_ or not numeric:
        return None
    if array.dtype != np.uint8:  # floats in [0, 1] are scaled; everything else is clipped to [0, 255]
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.size and np.nanmax(array) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


# ---------------------------------------------------------------------------------------------------- gym_cards
def formula_text(info: dict) -> str:
    """The points games' formula typed so far, from ``info["formula_text"]`` or the tokens in ``info["Formula"]``."""
    text = info.get("formula_text")
    if not isinstance(text, str):
        tokens = info.get("Formula") or []
        text = " ".join(str(t) for t in tokens) if isinstance(tokens, (list, tuple)) else str(tokens)
    return f"The current formula is: {text}" if text else "The current formula is empty."


_NUMBERS = tuple(str(i) for i in range(1, 11))

NUMBER_LINE = Task(
    env_id="gym_cards/NumberLine-v0",
    action_names=("-", "+"),
    description=(
        "You are playing a game called number line. You will see a target number and a current number in the "
        "image. Your goal is to move the current number to the target number, one step at a time: "
        '"+" adds one to the current number and "-" subtracts one from it.'
    ),
    thoughts_hint="first read the current number and the target number, then decide which action brings the current "
    "number closer to the target",
)

EZ_POINTS = Task(
    env_id="gym_cards/EZPoints-v0",
    action_names=_NUMBERS + ("+", "*", "="),
    description=(
        "You are an expert card game player. You see two playing cards in the image. Your goal is to type a formula "
        "that evaluates to 12, using the number of each card exactly once; 'J', 'Q' and 'K' count as 10. Each "
        "number or operator you choose is appended to the current formula, and '=' submits it."
    ),
    info_text=formula_text,
    thoughts_hint="first read the two cards and check whether the current formula is complete; if it is, choose "
    "'=', otherwise decide which number or operator to append so that the formula evaluates to 12",
)

POINTS_24 = Task(
    env_id="gym_cards/Points24-v0",
    action_names=_NUMBERS + ("+", "-", "*", "/", "(", ")", "="),
    description=(
        "You are an expert player of the 24 points card game. You see four playing cards in the image. Your goal is "
        "to type a formula that evaluates to 24, using the number of each card exactly once; 'J', 'Q' and 'K' count "
        "as 10. Each number, operator or parenthesis you choose is appended to the current formula, and '=' submits "
        "it."
    ),
    info_text=formula_text,
    thoughts_hint="first read the four cards and check whether the current formula already evaluates to 24; if it "
    "does, choose '=', otherwise decide which number, operator or parenthesis to append to reach 24",
)

BLACKJACK = Task(
    env_id="gym_cards/Blackjack-v0",
    action_names=("stand", "hit"),
    description=(
        "You are a blackjack player. The image shows the dealer's face-up card and your cards. You win if your "
        "total ends closer to 21 than the dealer's without going over 21. Choose \"hit\" to take another card or "
        '"stand" to keep your total and end your turn.'
    ),
    thoughts_hint="first add up your points and note the dealer's visible card, then decide whether to hit or stand",
)

# The one-step probe of `vlm_env_ppo.envs.probe`: the learning test's and the quickstart's task.
COLOR_CHOICE = Task(
    env_id="vlm_env_ppo/ColorChoice-v0",
    action_names=("red", "blue"),
    description="The image is filled with a single colour. Say which colour it is.",
    thoughts_hint="describe the colour of the image",
)

# The multi-step probes of `vlm_env_ppo.envs.multistep_probes` (the learning tests' tasks, `vlm_env_ppo.probes`).
DELAYED_CREDIT = Task(
    env_id="vlm_env_ppo/DelayedCredit-v0",
    action_names=("red", "blue"),
    description=(
        "The first image is filled with a single colour; later images are grey. Say which colour the first image is. "
        "Only your first answer counts, and you learn whether it was right a few steps later."
    ),
    thoughts_hint="describe the colour of the image",
)
TRAP = Task(
    env_id="vlm_env_ppo/Trap-v0",
    action_names=("left", "right"),
    description=(
        'You walk along a corridor. "left" takes a small prize at once and ends the game; "right" walks on, and '
        "a large prize waits at the far end."
    ),
    thoughts_hint="describe how far along the corridor you are",
)
MEMORY = Task(
    env_id="vlm_env_ppo/Memory-v0",
    action_names=("red", "blue"),
    description=(
        "The first image is filled with a single colour; later images are grey. Say which colour the first image was. "
        "Only your answer at the last grey image counts."
    ),
    thoughts_hint="recall the colour of the first image",
)
GRID_NAV = Task(
    env_id="vlm_env_ppo/GridNav-v0",
    action_names=("left", "right", "down"),
    description=(
        "You are on a 2x2 grid seen from above; your square is lit in its colour. Reach the green square below your "
        "start: a wall is in the way, so go round it. Each action moves you one square."
    ),
    thoughts_hint="describe the colour of your square, then decide which move brings you closer to the goal",
)
PROBE_TASKS = (DELAYED_CREDIT, TRAP, MEMORY, GRID_NAV)


# ------------------------------------------------------------------------------------- Sokoban (the field's yardstick)
def sokoban_grid_text(info: dict) -> str:
    """The Sokoban room as symbols (``info["grid_text"]``), for text-only play."""
    grid = info.get("grid_text")
    return f"The current room:\n{grid}" if isinstance(grid, str) and grid else ""


# verl-agent's visual Sokoban prompt (agent_system/environments/prompts/sokoban.py), rewritten for this package's
# frame colours and JSON answer.
SOKOBAN = Task(
    env_id="vlm_env_ppo/Sokoban-v0",
    action_names=("up", "down", "left", "right"),
    description=(
        "You are playing Sokoban, seen from above. Push every box onto a target. You are the blue disc; boxes are "
        "yellow squares (green once on a target), targets are red outlined squares, walls are brown, the floor is "
        "dark. Each action moves you one square; walking into a box pushes it one square the same way if the square "
        "behind it is free. You cannot pull a box, so do not push one into a corner or against a wall where it gets "
        "stuck."
    ),
    thoughts_hint="first find yourself, the box and the target, then decide which move brings the box closer to "
    "the target",
)
# The learning probe (`vlm_env_ppo.envs.sokoban.SokobanProbeEnv`): the same game, a one-line description.
SOKOBAN_PROBE = replace(
    SOKOBAN,
    env_id="vlm_env_ppo/SokobanProbe-v0",
    description="Sokoban: push the yellow box onto the red target; you are the blue disc.",
)
# The same game for a text-only model: the room as symbols in every prompt (the text-only systems' grid).
SOKOBAN_TEXT = replace(
    SOKOBAN,
    description=(
        "You are playing Sokoban. Push every box onto a target. The room is shown as a grid of symbols: # wall, _ "
        "floor, O target, X box, √ box on target, P you, S you on a target. Each action moves you one square; walking "
        "into a box pushes it one square the same way if the square behind it is free. You cannot pull a box."
    ),
    info_text=sokoban_grid_text,
)

# --------------------------------------------------------------------------------------- third-party gymnasium envs
# Made with `vlm_env_ppo.envs.adapter.make_env`: rendered rgb_array frames, the mission text in the prompt.
MINIGRID_ACTIONS = ("turn left", "turn right", "move forward", "pick up", "drop", "toggle", "done")
_MINIGRID_DESCRIPTION = (
    "You are playing a grid world game, seen from above. You are the red triangle; it points in the direction you "
    "face. Grey squares are walls; the lighter area in front of you is what you can see. \"turn left\" and \"turn "
    "right\" turn you in place, \"move forward\" moves you one square in the direction you face. Complete the "
    "mission."
)


def minigrid_movement_actions(info: dict) -> tuple[str, ...]:
    """MiniGrid's three movement actions: all that the navigation tasks (Empty, FourRooms) need."""
    return MINIGRID_ACTIONS[:3]


def minigrid_task(env_id: str, movement_only: bool = True) -> Task:
    """A task for a MiniGrid env (pip ``minigrid``): its 7 actions named, the mission text from the observation in
    the prompt, and (``movement_only``) only turn left / turn right / move forward offered."""
    return Task(
        env_id=env_id,
        action_names=MINIGRID_ACTIONS,
        description=_MINIGRID_DESCRIPTION,
        admissible_actions=minigrid_movement_actions if movement_only else None,
        thoughts_hint="first find where you are, which way you face and where the goal is, then decide how to move",
    )


FROZEN_LAKE = Task(
    env_id="FrozenLake-v1",
    action_names=("left", "down", "right", "up"),  # gymnasium's FrozenLake action order
    description=(
        "You are the elf on a frozen lake seen from above, on a grid of squares. Walk to the goal square with the red "
        "flag without stepping into a hole in the ice (the dark blue squares); each action moves you one square."
    ),
    thoughts_hint="first find the elf, the holes and the flag, then decide which direction is safe and closer",
)

# `vlm_env_ppo.envs.frozen_lake`: a new random map every episode, drawn by this package.
RANDOM_FROZEN_LAKE = Task(
    env_id="vlm_env_ppo/FrozenLake-v0",
    action_names=("left", "down", "right", "up"),  # gymnasium's FrozenLake action order
    description=(
        "You are the red disc on a frozen lake seen from above, on a grid of squares. Walk to the green goal square "
        "without stepping into a hole (the dark blue squares); pale blue squares are safe ice. Each action moves you "
        "one square; on slippery ice you may slide sideways instead."
    ),
    thoughts_hint="first find yourself, the holes and the goal, then decide which direction is safe and closer",
)
# The same game for a text-only model: the map as RAGEN's symbols in every prompt.
RANDOM_FROZEN_LAKE_TEXT = replace(
    RANDOM_FROZEN_LAKE,
    description=(
        "You are on a frozen lake, shown as a grid of symbols: P you, _ ice, O hole, G goal. Walk to the goal without "
        "stepping into a hole. Each action moves you one square; on slippery ice you may slide sideways instead."
    ),
    info_text=lambda info: f"The current map:\n{info['grid_text']}" if info.get("grid_text") else "",
)

def admissible_commands(info: dict) -> Sequence[str]:
    """The legal commands of a text game's step: ``info["admissible_commands"]`` (TextWorld, ALFWorld)."""
    return info.get("admissible_commands") or ()


def goal_text(info: dict) -> str:
    """The text game's goal, from ``info["task_description"]``, to keep it in every step's prompt."""
    goal = info.get("task_description")
    return f"Your task: {goal}" if isinstance(goal, str) and goal.strip() else ""


TEXTWORLD = Task(
    env_id="vlm_env_ppo/TextWorld-v0",
    action_names=None,  # text commands; the legal ones change every step
    description=(
        "You are playing a text adventure game. Below is what the game just said. Type one command at a time to "
        "complete your task."
    ),
    info_text=goal_text,
    admissible_actions=admissible_commands,
    thoughts_hint="first recall your task and where you are, then decide which command brings you closer to it",
)

# RL4VLM's ALFWorld prompt (VLM_PPO_ALF), rewritten: the scene in words, the task, the admissible actions.
ALFWORLD = Task(
    env_id="vlm_env_ppo/ALFWorld-v0",
    action_names=None,
    description=(
        "You are an expert in the ALFRED embodied household environment. Below is the text description of what you "
        "currently see. Complete your task with one admissible action at a time."
    ),
    info_text=goal_text,
    admissible_actions=admissible_commands,
    thoughts_hint="first recall your task and what you have done so far, then decide which admissible action to take "
    "next",
)

TASKS: dict[str, Task] = {
    task.env_id: task
    for task in (
        NUMBER_LINE,
        EZ_POINTS,
        POINTS_24,
        BLACKJACK,
        COLOR_CHOICE,
        *PROBE_TASKS,
        SOKOBAN,
        SOKOBAN_PROBE,
        FROZEN_LAKE,
        RANDOM_FROZEN_LAKE,
        TEXTWORLD,
        ALFWORLD,
        *(minigrid_task(f"MiniGrid-{name}-v0") for name in ("Empty-5x5", "Empty-Random-5x5", "Empty-6x6",
                                                           "Empty-Random-6x6", "Empty-8x8", "Empty-16x16", "FourRooms")),
    )
}


def register_task(task: Task) -> Task:
    """Add ``task`` to `TASKS` under ``task.env_id`` (replacing any task with that id) and return it."""
    if not isinstance(task, Task):
        raise TypeError(f"`register_task` expects a Task, got {type(task).__name__}.")
    TASKS[task.env_id] = task
    return task


def get_task(env_id: str) -> Task:
    """The registered `Task` for ``env_id``.

    Raises:
        `KeyError`: no task is registered for ``env_id``; the message lists the known ids and how to add one.
    """
    try:
        return TASKS[env_id]
    except (KeyError, TypeError):
        pass
    if isinstance(env_id, str) and env_id.startswith("MiniGrid-"):  # any other MiniGrid env: all seven actions
        return minigrid_task(env_id, movement_only=False)
    if isinstance(env_id, str):
        check_env_id(env_id)  # a typo is "no such env", not "no task"
    raise UnknownTaskError(
        f"No task is registered for env id {env_id!r}. Known ids: {sorted(TASKS)}. For your own env, build "
        "`vlm_env_ppo.tasks.Task(env_id, action_names, description)` and pass it as `VLMPPOTrainer(..., task=task)` "
        "or call `register_task(task)`; for your own prompt and answer format, subclass `Task` and override "
        "`build_messages`, `parse_action` and `answer_grammar` (the README's 'Use your own env')."
    )
