"""ALFWorld (Shridhar et al., ICLR 2021) household tasks as a gymnasium env, with RL4VLM's reward shaping.

`ALFWorldEnv` drives ALFWorld's text engine: TextWorld's PDDL backend running ALFWorld's PDDL domain and text grammar
on a game file (``game.tw-pddl``), with ALFWorld's own wrappers (`AlfredDemangler` names objects "apple 1",
"countertop 2"). Observations are the engine's text ("You arrive at countertop 1. On the countertop 1, you see an
apple 1."), actions are text commands ("take apple 1 from countertop 1"). With ``render_mode="rgb_array"`` and the
AI2-THOR simulator installed it drives ALFWorld's THOR env instead, whose frames are the visual ALFWorld of RL4VLM.

Data setup
----------
1. ``pip install 'vlm-env-ppo[alfworld]'`` (ALFWorld 0.4 with TextWorld and its Fast Downward planner: about 2.5
   minutes and 390 MB on 2 cores, as Jericho and Fast Downward build from source, which needs gcc, g++ and cmake).
2. ``export ALFWORLD_DATA=/path/to/alfworld_data`` (default ``~/.cache/alfworld``), then ``alfworld-download``: it
   fetches the ALFRED-derived games (``json_2.1.1/{train,valid_seen,valid_unseen}/<task>/<trial>/`` with
   ``game.tw-pddl``, ``initial_state.pddl`` and ``traj_data.json`` in each trial) and ``logic/alfred.{pddl,twl2}``.
   This needs the network; the envs themselves run offline.
3. ``ALFWorldEnv(split="train")`` then finds the games under ``$ALFWORLD_DATA/json_2.1.1/train``; or pass
   ``data_dir=`` (any tree of trials) or ``game_files=``.
4. Frames (visual ALFWorld, ``render_mode="rgb_array"``) additionally need ``pip install ai2thor==2.1.0``, an X server
   (or ``startx``-style virtual display) and a GPU, as ALFWorld's README describes; text-only play needs none of that.

A trial folder that has ``initial_state.pddl`` and ``traj_data.json`` but no ``game.tw-pddl`` can be turned into a
game with `make_alfworld_game` (what ``alfworld-generate`` does, with the PDDL planner instead of ALFWorld's
hand-coded expert to check that the game can be won), using the PDDL domain and grammar the ``alfworld`` wheel ships,
so small hand-written games run with no download at all (``tests/data/alfworld`` has two).

Rewards (RL4VLM)
----------------
Zhai et al. (NeurIPS 2024) shaped ALFWorld's reward as, per step (``compute_reward`` in RL4VLM's
``VLM_PPO_ALF/alf_utils.py``)::

    r = 50 * won + goal_condition_success_rate - 1 * (command not admissible)

where ``goal_condition_success_rate`` is ALFWorld's fraction of the task's goal conditions met (e.g. "the apple is
clean", "an apple is in the fridge"): RL4VLM adds its current *level* every step. `alfworld_reward` computes it;
``goal_condition_mode="increase"`` pays the *change* of that fraction instead (a potential-style shaping that does not
reward standing still). The text engine does not report goal conditions (only THOR does), so `goal_conditions_met`
computes ALFWorld's per-task conditions (``alfworld/env/tasks.py``) from the PDDL state.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np

from .textworld_env import (
    MAX_COMMAND_LENGTH,
    MAX_OBSERVATION_LENGTH,
    choose_game_file,
    clean_text,
    normalize_command,
    text_space,
)

# ALFWorld's task-type ids (``alfworld/agents/environment/alfred_tw_env.py``).
TASK_TYPES = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}
# Data splits under $ALFWORLD_DATA, as ALFWorld's configs name them.
SPLITS = {
    "train": os.path.join("json_2.1.1", "train"),
    "eval_in_distribution": os.path.join("json_2.1.1", "valid_seen"),
    "eval_out_of_distribution": os.path.join("json_2.1.1", "valid_unseen"),
}
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
PROBLEM_FILE = "initial_state.pddl"

# RL4VLM's coefficients (VLM_PPO_ALF/alf_utils.py, compute_reward).
RL4VLM_SUCCESS_REWARD = 50.0
RL4VLM_GOAL_CONDITION_COEF = 1.0
RL4VLM_INADMISSIBLE_PENALTY = 1.0
# RL4VLM's episode cap (alf-config.yaml, max_nb_steps_per_episode).
RL4VLM_MAX_EPISODE_STEPS = 50


def alfworld_data_dir() -> str:
    """``$ALFWORLD_DATA``, or ALFWorld's default ``~/.cache/alfworld`` (where ``alfworld-download`` puts the data)."""
    return os.environ.get("ALFWORLD_DATA") or os.path.expanduser(os.path.join("~", ".cache", "alfworld"))


def _alfworld_builtin(name: str) -> str:
    """A file the ``alfworld`` wheel ships in ``alfworld/data`` (``alfred.pddl``, ``alfred.twl2``)."""
    spec = importlib.util.find_spec("alfworld")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("ALFWorld games need the `alfworld` package: `pip install 'vlm-env-ppo[alfworld]'`.")
    return os.path.join(next(iter(spec.submodule_search_locations)), "data", name)


@dataclass(frozen=True)
class ALFWorldTask:
    """What a game asks for, from its ``traj_data.json`` (``pddl_params``) or its folder name
    (``<task_type>-<object>-<movable receptacle>-<receptacle>-<scene>``)."""

    task_type: str
    object_target: str
    parent_target: str = ""
    toggle_target: str = ""
    mrecep_target: str = ""


def load_task(game_file: str) -> ALFWorldTask | None:
    """The task of the game at ``game_file``, or None when neither its ``traj_data.json`` nor its folder names one."""
    trial_dir = os.path.dirname(os.path.abspath(game_file))
    traj_file = os.path.join(trial_dir, TRAJ_FILE)
    if os.path.isfile(traj_file):
        with open(traj_file) as f:
            traj = json.load(f)
        params = traj.get("pddl_params") or {}
        return ALFWorldTask(
            task_type=str(traj.get("task_type", "")),
            object_target=str(params.get("object_target") or ""),
            parent_target=str(params.get("parent_target") or ""),
            toggle_target=str(params.get("toggle_target") or ""),
            mrecep_target=str(params.get("mrecep_target") or ""),
        )
    for folder in (os.path.basename(os.path.dirname(trial_dir)), os.path.basename(trial_dir)):
        parts = folder.split("-")
        if len(parts) >= 4 and parts[0] in TASK_TYPES.values():
            task_type, obj, mrecep, parent = (part if part != "None" else "" for part in parts[:4])
            if task_type == "look_at_obj_in_light":  # ALFRED names the lamp where the receptacle would be
                return ALFWorldTask(task_type, obj, toggle_target=parent, mrecep_target=mrecep)
            return ALFWorldTask(task_type, obj, parent_target=parent, mrecep_target=mrecep)
    return None


def find_alfworld_games(data_dir: str | os.PathLike, task_types: Iterable[int] = tuple(TASK_TYPES)) -> list[str]:
    """The ``game.tw-pddl`` files under ``data_dir`` that ALFWorld plays, sorted by path.

    As ALFWorld's ``AlfredTWEnv.collect_game_files``: trials with movable receptacles or sliced objects are skipped
    (ALFWorld does not support them), so are games whose task type is not in ``task_types`` and games marked
    ``"solvable": false``.
    """
    unknown = set(task_types) - set(TASK_TYPES)
    if unknown:
        raise ValueError(f"Unknown ALFWorld task types {sorted(unknown)}; choose from {TASK_TYPES}.")
    wanted = {TASK_TYPES[t] for t in task_types}
    games = []
    for root, _, files in os.walk(os.fspath(data_dir)):
        if GAME_FILE not in files or "movable" in root or "Sliced" in root:
            continue
        game_file = os.path.join(root, GAME_FILE)
        task = load_task(game_file)
        if task is not None and task.task_type not in wanted:
            continue
        with open(game_file) as f:
            if json.load(f).get("solvable") is False:
                continue
        games.append(os.path.abspath(game_file))
    return sorted(games)


def make_alfworld_game(
    trial_dir: str | os.PathLike,
    *,
    task_description: str | None = None,
    seed: int = 0,
    domain_file: str | None = None,
    grammar_file: str | None = None,
    check_solvable: bool = True,
) -> str:
    """Write ``trial_dir/game.tw-pddl`` from the trial's ``initial_state.pddl`` and ``traj_data.json``; return its path.

    This is what ALFWorld's ``alfworld-generate`` does (its ``alfworld-play-tw`` shows the format): the game is a JSON
    object with the PDDL domain, the text grammar (its ``UNKNOWN GOAL`` replaced by the task description) and the
    PDDL problem.

    Args:
        trial_dir: a folder with ``initial_state.pddl`` (a PDDL problem of the ``alfred`` domain) and
            ``traj_data.json`` (at least ``task_type`` and ``pddl_params``).
        task_description: the goal in words; default one of ALFWorld's templates for the task type
            (``alfworld.gen.goal_library``), chosen with ``numpy.random.default_rng(seed)``.
        domain_file, grammar_file: default ``$ALFWORLD_DATA/logic/alfred.{pddl,twl2}`` when they exist (the files
            ALFWorld's own games use), else the copies the ``alfworld`` wheel ships.
        check_solvable: ask the PDDL planner (Fast Downward) for a plan; the game records ``"solvable"`` and the plan
            as its ``"walkthrough"`` (the commands that win it).
    """
    trial_dir = os.fspath(trial_dir)
    logic_dir = os.path.join(alfworld_data_dir(), "logic")
    if domain_file is None:
        domain_file = os.path.join(logic_dir, "alfred.pddl")
        domain_file = domain_file if os.path.isfile(domain_file) else _alfworld_builtin("alfred.pddl")
    if grammar_file is None:
        grammar_file = os.path.join(logic_dir, "alfred.twl2")
        grammar_file = grammar_file if os.path.isfile(grammar_file) else _alfworld_builtin("alfred.twl2")
    with open(os.path.join(trial_dir, PROBLEM_FILE)) as f:
        problem = f.read()
    with open(os.path.join(trial_dir, TRAJ_FILE)) as f:
        traj = json.load(f)
    with open(domain_file) as f:
        domain = f.read()
    with open(grammar_file) as f:
        grammar = f.read()
    if task_description is None:
        task_description = templated_task_description(traj, np.random.default_rng(seed))
    if "UNKNOWN GOAL" not in grammar:
        raise ValueError(f"{grammar_file} has no 'UNKNOWN GOAL' placeholder for the task description.")
    game = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", task_description),
        "pddl_problem": problem,
    }
    if check_solvable:
        walkthrough = _plan(game)
        game["solvable"] = bool(walkthrough)
        game["walkthrough"] = walkthrough
    game_file = os.path.join(trial_dir, GAME_FILE)
    with open(game_file, "w") as f:
        json.dump(game, f)
    return game_file


def templated_task_description(traj: dict, rng: np.random.Generator) -> str:
    """ALFWorld's templated goal ("put a clean apple in fridge") for a ``traj_data.json`` (as
    ``alfworld.agents.utils.misc.get_templated_task_desc``, with a seeded choice of template)."""
    from alfworld.gen import goal_library

    params = traj["pddl_params"]
    goal = traj["task_type"] + ("_slice" if params.get("object_sliced") else "")
    templates = goal_library.gdict[goal]["templates"]
    template = templates[int(rng.integers(len(templates)))]
    return template.format(
        obj=str(params.get("object_target") or "").lower(),
        recep=str(params.get("parent_target") or "").lower(),
        toggle=str(params.get("toggle_target") or "").lower(),
        mrecep=str(params.get("mrecep_target") or "").lower(),
    )


def _start_text_engine(game, request_infos):
    """A TextWorld environment running an ALFWorld game (a path or the game's dict) with ALFWorld's wrappers."""
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    from textworld.envs import PddlEnv

    env = AlfredInfos(AlfredDemangler()(PddlEnv(request_infos)))  # as `textworld.start(..., wrappers=[...])` builds it
    env.load(game)
    return env


def _plan(game: dict) -> list[str]:
    """A winning command sequence for an ALFWorld game dict (Fast Downward), ``[]`` when there is none."""
    import textworld

    env = _start_text_engine(game, textworld.EnvInfos(extras=["walkthrough"]))
    try:
        return list(env.reset().get("extra.walkthrough") or [])
    finally:
        env.close()


def goal_conditions_met(facts: Iterable, task: ALFWorldTask | None, won: bool) -> tuple[int, int]:
    """(met, total) goal conditions of ``task`` in a PDDL state (``facts``: TextWorld `Proposition`s, ALFWorld's raw
    names), as ALFWorld counts them for THOR (``alfworld/env/tasks.py``, ``goal_conditions_met``):

    - pick_and_place_simple: an object of the type in a receptacle of the type (1 condition);
    - pick_two_obj_and_place: the most such objects in one such receptacle, up to 2 (2);
    - look_at_obj_in_light: an object of the type held; a lamp of the type on and next to the agent (2);
    - pick_{clean,heat,cool}_then_place_in_recep: one in place; one clean/hot/cool; one both (3).

    Unknown or missing tasks count the goal itself: (won, 1).
    """
    if task is None or task.task_type not in TASK_TYPES.values():
        return int(won), 1
    by_name: dict[str, list[tuple[str, ...]]] = {}
    for fact in facts:
        by_name.setdefault(fact.name.lower(), []).append(tuple(arg.name.lower() for arg in fact.arguments))
    otype = {obj: kind for obj, kind in by_name.get("objecttype", [])}
    rtype = {recep: kind for recep, kind in by_name.get("receptacletype", [])}
    in_receptacle = by_name.get("inreceptacle", [])
    targets = {obj for obj, kind in otype.items() if kind == task.object_target.lower() + "type"}
    receptacles = {recep for recep, kind in rtype.items() if kind == task.parent_target.lower() + "type"}
    in_place = [(obj, recep) for obj, recep in in_receptacle if obj in targets and recep in receptacles]
    placed = {obj for obj, _ in in_place}

    if task.task_type == "pick_and_place_simple":
        return int(bool(placed)), 1
    if task.task_type == "pick_two_obj_and_place":
        per_receptacle = [sum(1 for _, r in in_place if r == recep) for recep in receptacles]
        return min(max(per_receptacle, default=0), 2), 2
    if task.task_type == "look_at_obj_in_light":
        held = {obj for _, obj in by_name.get("holds", [])}
        agent_at = {loc for _, loc in by_name.get("atlocation", [])}
        recep_at = {recep: loc for recep, loc in by_name.get("receptacleatlocation", [])}
        toggled = {fact[0] for fact in by_name.get("istoggled", [])} | {fact[0] for fact in by_name.get("ison", [])}
        lamps = {obj for obj, kind in otype.items() if kind == task.toggle_target.lower() + "type"}
        lamp_on_here = any(
            obj in lamps and obj in toggled and recep_at.get(recep) in agent_at for obj, recep in in_receptacle
        )
        return int(bool(targets & held)) + int(lamp_on_here), 2
    state = {"pick_clean_then_place_in_recep": "isclean", "pick_heat_then_place_in_recep": "ishot"}.get(
        task.task_type, "iscool"
    )
    changed = {fact[0] for fact in by_name.get(state, [])} & targets
    return int(bool(placed)) + int(bool(changed)) + int(bool(placed & changed)), 3


def alfworld_reward(
    won: bool,
    goal_condition_success_rate: float,
    previous_goal_condition_success_rate: float,
    action_admissible: bool,
    *,
    success_reward: float = RL4VLM_SUCCESS_REWARD,
    goal_condition_coef: float = RL4VLM_GOAL_CONDITION_COEF,
    goal_condition_mode: str = "level",
    inadmissible_penalty: float = RL4VLM_INADMISSIBLE_PENALTY,
) -> float:
    """RL4VLM's shaped ALFWorld reward for one step:
    ``success_reward * won + goal_condition_coef * g - inadmissible_penalty * (not action_admissible)``, where ``g`` is
    the goal-condition success rate after the step (``goal_condition_mode="level"``, RL4VLM's ``compute_reward``) or
    its change over the step (``"increase"``).
    """
    if goal_condition_mode == "level":
        progress = goal_condition_success_rate
    elif goal_condition_mode == "increase":
        progress = goal_condition_success_rate - previous_goal_condition_success_rate
    else:
        raise ValueError(f"`goal_condition_mode` must be 'level' or 'increase', got {goal_condition_mode!r}.")
    reward = success_reward * float(won) + goal_condition_coef * float(progress)
    if not action_admissible:
        reward -= inadmissible_penalty
    return float(reward)


_TASK_LINE = re.compile(r"Your task is to:\s*(.+?)\s*$", re.MULTILINE)


def task_description_from_text(text: str) -> str:
    """The goal in ALFWorld's introduction ("Your task is to: put a clean apple in fridge." -> "put a clean apple in
    fridge"), or ``""``."""
    match = _TASK_LINE.search(text)
    return match.group(1).rstrip(".") if match else ""


def _thor_config(data_dir: str, task_types: Sequence[int], frame_size: int) -> dict:
    """The parts of ALFWorld's ``base_config.yaml`` that ``AlfredThorEnv`` reads, for an oracle controller."""
    return {
        "dataset": {
            "data_path": data_dir,
            "eval_id_data_path": data_dir,
            "eval_ood_data_path": data_dir,
            "num_train_games": -1,
            "num_eval_games": -1,
        },
        "env": {
            "type": "AlfredThorEnv",
            "task_types": list(task_types),
            "goal_desc_human_anns_prob": 0.0,
            "domain_randomization": False,
            "expert_type": "handcoded",
            "thor": {
                "screen_width": frame_size,
                "screen_height": frame_size,
                "smooth_nav": False,
                "save_frames_to_disk": False,
                "save_frames_path": "./videos/",
            },
        },
        "controller": {"type": "oracle", "debug": False, "load_receps": True},
        "mask_rcnn": {"pretrained_model_path": ""},
        "general": {"training_method": "dagger"},
        # The env counts steps itself (truncation); THOR's own cap is set out of the way.
        "dagger": {"training": {"max_nb_steps_per_episode": 1 << 30}},
    }


class _ThorGame:
    """ALFWorld's THOR env (one simulator thread) behind the small interface `ALFWorldEnv` uses.

    Not exercised by the test suite (it needs AI2-THOR 2.1, an X display and ALFRED's scenes); it follows RL4VLM's
    ``AlfEnv`` (``VLM_PPO_ALF/alf_utils.py``) with the game chosen by the caller instead of ALFWorld's global ``random``.
    """

    def __init__(self, config: dict, expert_plan: bool):
        from alfworld.agents.environment.alfred_thor_env import AlfredThorEnv

        self.env = AlfredThorEnv(config, train_eval="train" if expert_plan else "eval_in_distribution")
        self.env.init_env(batch_size=1)

    def reset(self, game_file: str) -> tuple[str, dict]:
        traj_file = os.path.join(os.path.dirname(game_file), TRAJ_FILE)
        self.env.action_queues[0].put((None, True, traj_file))  # AlfredThorEnv.reset with a chosen task
        observations, _, infos = self.env.wait_and_get_info()
        return observations[0], {key: value[0] for key, value in infos.items()}

    def step(self, command: str) -> tuple[str, dict]:
        observations, _, _, infos = self.env.step([command])
        return observations[0], {key: value[0] for key, value in infos.items()}

    def frame(self) -> np.ndarray:
        # AlfredThorEnv.get_frames() gives THOR's RGB frames flipped to BGR for OpenCV; RL4VLM flips them back too.
        return np.ascontiguousarray(self.env.get_frames()[0][:, :, ::-1], dtype=np.uint8)

    def close(self) -> None:
        self.env.close()


class ALFWorldEnv(gym.Env):
    """
    ## Description
    ALFWorld's household tasks (Shridhar et al., "ALFWorld: Aligning Text and Embodied Environments for Interactive
    Learning", ICLR 2021): "put a clean apple in fridge", "look at mug under the desklamp", ... The agent reads what it
    sees ("You arrive at countertop 1. On the countertop 1, you see an apple 1.") and types one of the admissible
    commands ("take apple 1 from countertop 1", "clean apple 1 with sinkbasin 1", "move apple 1 to fridge 1"). Each
    reset picks a game with ``self.np_random``. Visual ALFWorld, as in RL4VLM (Zhai et al., NeurIPS 2024), is the same
    game played in AI2-THOR with frames (``render_mode="rgb_array"``).

    ## Action Space
    `Text(0, 1024)`: a command, lower-cased and reduced to one line. Any string is accepted: one that is not among
    ``info["admissible_commands"]`` gets "Nothing happens.", leaves the game as it was, is penalised
    (``inadmissible_penalty``) and is flagged in ``info["action_admissible"]``.

    ## Observation Space
    `Text(0, 65536)`: the engine's feedback (at reset, the room overview and "Your task is to: ...").

    ## Rewards
    RL4VLM's shaping (`alfworld_reward`): ``success_reward`` (50) when the task is done, plus ``goal_condition_coef``
    (1) times the goal-condition success rate (its level, RL4VLM's choice, or its increase with
    ``goal_condition_mode="increase"``), minus ``inadmissible_penalty`` (1) for a command that was not admissible.

    ## Episode End
    - Termination: the task is done (ALFWorld games cannot be lost).
    - Truncation: ``max_episode_steps`` (RL4VLM: 50) steps without it.

    ## Information
    At reset and every step: ``admissible_commands`` (`list[str]`), ``is_success`` / ``won``,
    ``goal_condition_success_rate`` (in [0, 1]), ``task_description`` ("put a clean apple in fridge"), ``task_type``
    (e.g. ``"pick_clean_then_place_in_recep"``, or None when the game does not say), ``game_file``,
    ``action_admissible`` (True at reset) and, with ``expert_plan=True``, ``expert_plan`` (`list[str]`: a winning
    command sequence from here, found by the PDDL planner each step; slow on ALFRED-sized games).

    ## Arguments
    - ``game_files``: paths of ``game.tw-pddl`` files, or
    - ``data_dir``: a tree of ALFWorld trials (`find_alfworld_games`), or neither: ``$ALFWORLD_DATA/<split>``.
    - ``split`` (default ``"train"``): ``"train"``, ``"eval_in_distribution"`` or ``"eval_out_of_distribution"``.
    - ``task_types`` (default all six): ALFWorld's task-type ids (`TASK_TYPES`) to keep.
    - ``max_episode_steps`` (default 50), ``render_mode`` (None or ``"rgb_array"``, which needs ``ai2thor``),
      ``frame_size`` (default 300, THOR frames), ``expert_plan`` (default False).
    - ``success_reward``, ``goal_condition_coef``, ``goal_condition_mode``, ``inadmissible_penalty``: the reward.

    ``reset(options={"game_file": path})`` or ``reset(options={"game_index": i})`` plays a given game.

    ## Version History
    - v0: ALFWorld 0.4 text engine (and THOR when installed), RL4VLM reward, seeded game choice.
    """

    # Frames only where the simulator is installed, so that callers that pick "rgb_array" whenever an env offers it
    # (`vlm_env_ppo.envs.adapter.make_env`) get the text game otherwise.
    metadata: ClassVar[dict] = {
        "render_modes": ["rgb_array"] if importlib.util.find_spec("ai2thor") is not None else [],
        "render_fps": 4,
    }

    def __init__(
        self,
        game_files: Sequence[str] | str | None = None,
        data_dir: str | os.PathLike | None = None,
        split: str = "train",
        task_types: Sequence[int] = tuple(TASK_TYPES),
        max_episode_steps: int = RL4VLM_MAX_EPISODE_STEPS,
        render_mode: str | None = None,
        frame_size: int = 300,
        expert_plan: bool = False,
        success_reward: float = RL4VLM_SUCCESS_REWARD,
        goal_condition_coef: float = RL4VLM_GOAL_CONDITION_COEF,
        goal_condition_mode: str = "level",
        inadmissible_penalty: float = RL4VLM_INADMISSIBLE_PENALTY,
    ):
        if importlib.util.find_spec("alfworld") is None or importlib.util.find_spec("textworld") is None:
            raise ImportError("ALFWorldEnv needs the `alfworld` package: `pip install 'vlm-env-ppo[alfworld]'`.")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Unsupported render_mode {render_mode!r}; use None (text only) or 'rgb_array' (THOR).")
        if render_mode == "rgb_array" and importlib.util.find_spec("ai2thor") is None:
            raise ImportError(
                "render_mode='rgb_array' plays ALFWorld in the AI2-THOR simulator, which is not installed: "
                "`pip install ai2thor==2.1.0` (and run it with an X display, see ALFWorld's README), or use "
                "render_mode=None for the text-only game."
            )
        if goal_condition_mode not in ("level", "increase"):
            raise ValueError(f"`goal_condition_mode` must be 'level' or 'increase', got {goal_condition_mode!r}.")
        if int(max_episode_steps) < 1:
            raise ValueError(f"`max_episode_steps` must be >= 1, got {max_episode_steps}.")
        if game_files is not None and data_dir is not None:
            raise ValueError("Pass at most one of `game_files` and `data_dir`.")
        if game_files is None:
            if data_dir is None:
                if split not in SPLITS:
                    raise ValueError(f"`split` must be one of {sorted(SPLITS)}, got {split!r}.")
                data_dir = os.path.join(alfworld_data_dir(), SPLITS[split])
            data_dir = os.fspath(data_dir)
            game_files = find_alfworld_games(data_dir, task_types) if os.path.isdir(data_dir) else []
            if not game_files:
                raise FileNotFoundError(
                    f"No ALFWorld games (game.tw-pddl) under {data_dir!r}. Set ALFWORLD_DATA and run "
                    "`alfworld-download` (see this module's docstring), pass `data_dir=`/`game_files=`, or build games "
                    "from PDDL problems with `make_alfworld_game`."
                )
        elif isinstance(game_files, (str, os.PathLike)):
            game_files = [game_files]
        for path in game_files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"ALFWorld game file {os.fspath(path)!r} does not exist.")
        self.game_files = tuple(os.path.abspath(os.fspath(path)) for path in game_files)
        self.task_types = tuple(task_types)
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode
        self.frame_size = int(frame_size)
        self.expert_plan = bool(expert_plan)
        self.success_reward = float(success_reward)
        self.goal_condition_coef = float(goal_condition_coef)
        self.goal_condition_mode = goal_condition_mode
        self.inadmissible_penalty = float(inadmissible_penalty)
        self.observation_space = text_space(MAX_OBSERVATION_LENGTH)
        self.action_space = text_space(MAX_COMMAND_LENGTH)
        self._engine = None  # text engine (TextWorld PddlEnv + ALFWorld wrappers) or _ThorGame, built on first reset
        self._game_file: str | None = None
        self._task: ALFWorldTask | None = None
        self._task_description = ""
        self._observation = ""
        self._admissible: list[str] = []
        self._won = False
        self._goal_condition = 0.0
        self._expert: list[str] = []
        self._steps = 0
        self._started = False

    # -- engines -------------------------------------------------------------------------------------------------
    def _load(self, game_file: str) -> None:
        if self.render_mode == "rgb_array":
            if self._engine is None:
                data_dir = os.path.dirname(os.path.dirname(os.path.dirname(game_file)))
                self._engine = _ThorGame(_thor_config(data_dir, self.task_types, self.frame_size), self.expert_plan)
        elif self._engine is None:
            import textworld

            infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=self.expert_plan)
            self._engine = _start_text_engine(game_file, infos)
        elif game_file != self._game_file:
            self._engine.load(game_file)
        self._game_file = game_file

    def _read_state(self, state, text: str) -> None:
        """Update the env's view of the game from an engine's state (text engine) or info dict (THOR)."""
        self._observation = clean_text(text)
        self._admissible = [clean_text(c, MAX_COMMAND_LENGTH) for c in state.get("admissible_commands") or []]
        self._won = bool(state.get("won"))
        if self.render_mode == "rgb_array":
            self._goal_condition = float(state.get("goal_condition_success_rate") or 0.0)
            self._expert = list(state.get("extra.expert_plan") or [])
        else:
            met, total = goal_conditions_met(state.get("_facts") or [], self._task, self._won)
            self._goal_condition = 1.0 if self._won else met / total
            self._expert = list(state.get("policy_commands") or []) if self.expert_plan else []

    # -- gymnasium API -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = int(self.np_random.integers(len(self.game_files)))
        game_file = choose_game_file(self.game_files, options, index)
        self._load(game_file)
        self._task = load_task(game_file)
        if self.render_mode == "rgb_array":
            text, state = self._engine.reset(game_file)
        else:
            state = self._engine.reset()
            text = state.feedback or ""
        self._task_description = task_description_from_text(text)
        self._read_state(state, text)
        self._steps = 0
        self._started = True
        return self._observation, self._get_info(action_admissible=True)

    def step(self, action):
        if not self._started:
            raise RuntimeError("Call reset() before step().")
        command = normalize_command(action).lower()
        admissible = command in self._admissible
        if self._won:  # the task is done: nothing more happens until the next reset
            return self._observation, 0.0, True, False, self._get_info(action_admissible=admissible)
        previous = self._goal_condition
        if self.render_mode == "rgb_array":
            text, state = self._engine.step(command)
        else:
            state, _, _ = self._engine.step(command)
            text = state.feedback or ""
        self._read_state(state, text)
        self._steps += 1
        reward = alfworld_reward(
            self._won,
            self._goal_condition,
            previous,
            admissible,
            success_reward=self.success_reward,
            goal_condition_coef=self.goal_condition_coef,
            goal_condition_mode=self.goal_condition_mode,
            inadmissible_penalty=self.inadmissible_penalty,
        )
        terminated = self._won
        truncated = not terminated and self._steps >= self.max_episode_steps
        return self._observation, reward, terminated, truncated, self._get_info(action_admissible=admissible)

    def _get_info(self, action_admissible: bool) -> dict:
        info = {
            "admissible_commands": list(self._admissible),
            "is_success": self._won,
            "won": self._won,
            "goal_condition_success_rate": self._goal_condition,
            "task_description": self._task_description,
            "task_type": self._task.task_type if self._task is not None else None,
            "game_file": self._game_file,
            "action_admissible": bool(action_admissible),
        }
        if self.expert_plan:
            info["expert_plan"] = list(self._expert)
        return info

    def render(self):
        """The THOR frame (H×W×3 uint8) with ``render_mode="rgb_array"``; None for the text-only game."""
        if self.render_mode == "rgb_array" and self._engine is not None:
            return self._engine.frame()
        return None

    def close(self):
        if self._engine is not None:
            self._engine.close()
            self._engine = None
            self._game_file = None
        super().close()


__all__ = [
    "SPLITS",
    "TASK_TYPES",
    "ALFWorldEnv",
    "ALFWorldTask",
    "alfworld_data_dir",
    "alfworld_reward",
    "find_alfworld_games",
    "goal_conditions_met",
    "load_task",
    "make_alfworld_game",
    "task_description_from_text",
    "templated_task_description",
]
