"""Expert demonstrations from the envs: the data of stage 1 of the paper's pipeline (SFT before PPO).

Our envs have exact reference policies (`vlm_env_ppo.envs.solvers`); their experts (`EXPERTS`, `register_expert`)
play episodes and each step becomes a row of TRL's conversational prompt-completion data:

```python
>>> from vlm_env_ppo.sft import generate_sft_dataset
>>> ds = generate_sft_dataset("gym_cards/NumberLine-v0", num_episodes=2, seed=0)
>>> row = ds[0]
>>> row["completion"][0]["content"][0]["text"]
'{"thoughts": "The current number is 3 and the target is 5; 3 < 5, so I add one.", "action": "+"}'
>>> row["action"], row["action_name"], row["images"][0].size
(1, '+', (300, 300))

```

Same code path as PPO: each row's prompt is `Task.build_messages` (what `VLMPPOTrainer.build_messages` calls) with
the image moved to the ``images`` column, and its target is `Task.example_answer` (the format `Task.parse_action`
reads). TRL renders the prompt with the processor's chat template and ``add_generation_prompt=True``, as the
trainer's `build_model_inputs` does, so SFT and PPO see the same prompt tokens (``tests/test_sft.py`` checks it).

Dataset format: TRL's *conversational prompt-completion* with an ``images`` column (one image per row). Chosen over
``messages`` because SFTTrainer then trains on the completion only (``completion_only_loss`` defaults to True for
prompt-completion data) with any chat template, whereas ``assistant_only_loss`` needs ``{% generation %}`` markers
that most VLM templates lack.

The SFT run on this data (`run_sft`, `evaluate_policy`, ``vlm-env-ppo sft``) is `vlm_env_ppo.sft`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from . import envs as _envs  # noqa: F401  (registers the environments)
from .envs.formula import BLANK, DEFAULT_RULES, join_formula
from .envs.probe import COLORS
from .envs.frozen_lake import solve_frozen_lake
from .envs.sokoban_levels import DIRECTION_NAMES, solve
from .envs.solvers import blackjack_basic_strategy, number_line_oracle, solve_points
from .tasks import Task, get_task, to_pil_image

# ``expert(observation, info, env) -> (action index, thoughts)``: ``env`` is the unwrapped env.
ExpertFn = Callable[[Any, dict, gym.Env], tuple[int, str]]


# ---------------------------------------------------------------------------------------------------- experts
def number_line_expert(observation, info: dict, env: gym.Env) -> tuple[int, str]:
    """`number_line_oracle`, saying which number is smaller."""
    current, target = int(info["Current"]), int(info["Target"])
    action = number_line_oracle(info)
    relation, verb = ("<", "add") if current < target else (">", "subtract")
    return (
        action,
        f"The current number is {current} and the target is {target}; {current} {relation} {target}, so I {verb} one.",
    )


def points_expert(observation, info: dict, env: gym.Env) -> tuple[int, str]:
    """EZPoints / Points24: solve the deal, type the solution token by token, then ``=`` (as
    `vlm_env_ppo.envs.solvers.points_expert_action`), saying the cards, the formula so far and the plan."""
    names = list(env.action_names)
    target = int(info["target"])
    rules = getattr(env, "rules", DEFAULT_RULES)  # the solution must win under the env's rule set
    operators = [op for op in ("+", "-", "*", "/") if op in names]
    solution = solve_points(info["Numbers"], target, operators, parentheses="(" in names, rules=rules)
    typed = [str(token) for token in info.get("Formula", []) if str(token) != BLANK]
    cards = _join(info["Cards"])
    values = _join([str(n) for n in info["Numbers"]])
    formula = join_formula(typed, rules)
    seen = f"The cards are {cards}, worth {values}. " + (
        f"The current formula is {formula}." if formula else "The current formula is empty."
    )
    if solution is None:
        return names.index("="), f"{seen} No formula with these numbers makes {target}, so I submit with '='."
    plan = join_formula(solution, rules)  # as the prompt shows formulas: "24*1*1" under "rl4vlm"
    if typed != solution[: len(typed)]:
        return names.index("="), (
            f"{seen} It does not start my solution {plan} = {target} and there is no undo, so I submit with '='."
        )
    if len(typed) == len(solution):
        return names.index("="), f"{seen} It uses every card and equals {target}, so I submit with '='."
    token = solution[len(typed)]
    return names.index(token), f"{seen} My solution is {plan} = {target}, so I type '{token}' next."


def blackjack_expert(observation, info: dict, env: gym.Env) -> tuple[int, str]:
    """`blackjack_basic_strategy`, saying the hand, the dealer's card and the rule that applies."""
    total, soft = int(info["player_sum"]), bool(info["usable_ace"])
    action = blackjack_basic_strategy(info)
    hand = f"{'a soft' if soft else 'a hard'} {total}"
    seen = f"My cards are {_join(info['player_cards'])}: {hand}. The dealer shows {info['dealer_card']}."
    if soft:
        if total >= 19:
            rule = "Basic strategy stands on soft 19 or more"
        elif total == 18:
            rule = (
                "Basic strategy stands on soft 18 against a dealer 2 to 8"
                if action == 0
                else "Basic strategy hits soft 18 against a dealer 9, 10 or ace"
            )
        else:
            rule = "Basic strategy hits soft 17 or less"
    elif total >= 17:
        rule = "Basic strategy stands on hard 17 or more"
    elif total >= 13:
        rule = (
            "Basic strategy stands on 13 to 16 against a dealer 2 to 6"
            if action == 0
            else "Basic strategy hits 13 to 16 against a dealer 7 or higher"
        )
    elif total == 12:
        rule = (
            "Basic strategy stands on 12 against a dealer 4 to 6"
            if action == 0
            else "Basic strategy hits 12 against a dealer 2, 3, 7 or higher"
        )
    else:
        rule = "With 11 or less no card can bust me"
    return action, f"{seen} {rule}, so I {'stand' if action == 0 else 'hit'}."


def color_choice_expert(observation, info: dict, env: gym.Env) -> tuple[int, str]:
    """ColorChoice: the colour nearest to the frame's mean colour (read from the image, like a correct reasoner)."""
    mean = np.asarray(observation, dtype=np.float64).reshape(-1, 3).mean(0)
    names = list(COLORS)
    distances = [float(np.sum((mean - np.asarray(COLORS[n])) ** 2)) for n in names]
    name = names[int(np.argmin(distances))]
    return names.index(name), f"The image is filled with {name}."


def sokoban_expert(observation, info: dict, env: gym.Env) -> tuple[int, str]:
    """Sokoban: the first move of a shortest solution (`vlm_env_ppo.envs.sokoban_levels.solve` on the env's level),
    saying where the player, the boxes and the targets are (row, column, from the top left) and how many moves
    remain."""
    level = env.level
    plan = solve(level)
    cells = lambda items: _join([f"({r}, {c})" for r, c in items])  # noqa: E731
    seen = (f"I am at {cells([level.player])}; the box{'es are' if len(level.boxes) > 1 else ' is'} at "
            f"{cells(level.boxes)} and the target{'s are' if len(level.targets) > 1 else ' is'} at "
            f"{cells(level.targets)}.")
    if not plan:  # unsolvable from here (a box stuck) or already solved: any move
        return 0, f"{seen} No sequence of moves solves the room from here, so I move up."
    first = DIRECTION_NAMES[plan[0]]
    return plan[0], f"{seen} The shortest solution takes {len(plan)} more move{'s' if len(plan) > 1 else ''}, " \
        f"starting with {first}."


def frozen_lake_expert(observation, info: dict, env: gym.Env) -> tuple[int, str]:
    """FrozenLake: the move that maximizes the chance of reaching the goal in the steps left (exact value iteration
    on gymnasium's transitions, `vlm_env_ppo.envs.frozen_lake.solve_frozen_lake`), saying where the agent is."""
    left = max(1, env.max_steps - int(info.get("steps", 0)))
    action = int(solve_frozen_lake(env.desc, env.is_slippery, env.max_steps)[left, env.cell])
    row, col = divmod(env.cell, env.size)
    name = env.ACTION_NAMES[action]
    slip = " The ice is slippery, so" if env.is_slippery else " So"
    return action, (f"I am at row {row}, column {col}; the goal is at the bottom right.{slip} I move {name}, the "
                    "safest way towards the goal.")


def _join(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


EXPERTS: dict[str, ExpertFn] = {
    "gym_cards/NumberLine-v0": number_line_expert,
    "gym_cards/EZPoints-v0": points_expert,
    "gym_cards/Points24-v0": points_expert,
    "gym_cards/Blackjack-v0": blackjack_expert,
    "vlm_env_ppo/ColorChoice-v0": color_choice_expert,
    "vlm_env_ppo/Sokoban-v0": sokoban_expert,
    "vlm_env_ppo/FrozenLake-v0": frozen_lake_expert,
}


def register_expert(env_id: str, expert: ExpertFn) -> ExpertFn:
    """Add an expert for ``env_id`` (``expert(observation, info, unwrapped_env) -> (action, thoughts)``)."""
    if not callable(expert):
        raise TypeError(f"`expert` must be callable as expert(observation, info, env), got {type(expert).__name__}.")
    EXPERTS[env_id] = expert
    return expert


def get_expert(env_id: str) -> ExpertFn:
    try:
        return EXPERTS[env_id]
    except KeyError:
        raise KeyError(
            f"No expert is registered for {env_id!r}. Known: {sorted(EXPERTS)}. Pass `expert=` (a function "
            "`(observation, info, env) -> (action_index, thoughts)`) or call `register_expert(env_id, expert)`."
        ) from None


# ---------------------------------------------------------------------------------------------------- dataset
def sft_features():
    """The `datasets.Features` of a generated dataset (fixed, so datasets from different envs concatenate)."""
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    message = {"role": Value("string"), "content": List(part)}
    return Features(
        {
            "prompt": List(message),
            "completion": List(message),
            "images": List(Image()),
            "action": Value("int64"),
            "action_name": Value("string"),
            "played_action": Value("int64"),
            "expert": Value("bool"),
            "reward": Value("float64"),
            "env_id": Value("string"),
            "episode": Value("int64"),
            "step": Value("int64"),
            "seed": Value("int64"),
            "action_only": Value("bool"),
        }
    )


def prompt_and_images(messages: list[dict]) -> tuple[list[dict], list]:
    """Split chat messages with inline images into TRL's ``prompt`` (image placeholders) and ``images``.

    ``[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": t}]}]`` becomes
    ``[{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": t}]}]`` and ``[img]``;
    TRL's `prepare_multimodal_messages` puts the images back in order before the chat template runs.
    """
    prompt, images = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for part in content:
            if part["type"] == "image":
                images.append(part["image"])
                parts.append({"type": "image", "text": None})
            else:
                parts.append({"type": part["type"], "text": part.get("text")})
        prompt.append({"role": message["role"], "content": parts})
    return prompt, images


def generate_sft_dataset(
    env_id: str,
    num_episodes: int,
    seed: int = 0,
    *,
    action_only: bool = False,
    random_action_prob: float = 0.0,
    task: Task | None = None,
    expert: ExpertFn | None = None,
    env_kwargs: dict | None = None,
    max_episode_steps: int = 100,
):
    """Play ``num_episodes`` episodes with the env's expert and return one `datasets.Dataset` row per step.

    Episode ``k`` is reset with ``seed + k`` (as the evaluation harness does). With probability
    ``random_action_prob`` a step plays a uniformly random action instead of the expert's, so the data also covers
    states off the expert's path (e.g. a wrong token in the formula, a step away from the target); the row's target
    is still the expert's answer for that state, and ``expert`` is False on it.

    Args:
        env_id: a registered env id (``gym_cards/...`` or ``vlm_env_ppo/ColorChoice-v0``), made with ``gym.make``.
        num_episodes: episodes to play.
        seed: episode ``k`` uses ``seed + k``; the random-step draws use ``numpy.random.default_rng(seed)``.
        action_only: targets ``{"action": ...}`` for the no-CoT prompt (``VLMPPOConfig.action_only``).
        random_action_prob: probability of playing a random action instead of the expert's (in [0, 1]).
        task: the prompt/parser; defaults to ``get_task(env_id)``. Use the same one as the PPO trainer.
        expert: ``expert(observation, info, unwrapped_env) -> (action, thoughts)``; defaults to `EXPERTS[env_id]`.
        env_kwargs: passed to ``gym.make``.
        max_episode_steps: stop an episode after this many steps (a guard for user envs that never end).

    Returns a `datasets.Dataset` with columns (`sft_features`):

    - ``prompt``, ``completion``: conversational prompt-completion for TRL's `SFTTrainer`. The prompt is the
      trainer's own `Task.build_messages(observation, info, action_only)` with the image replaced by a placeholder;
      the completion is `Task.example_answer(action, thoughts, action_only)`.
    - ``images``: ``[frame]``, the env's observation as a PIL image (stored losslessly as PNG).
    - ``action`` (the expert's action index, the target), ``action_name``, ``played_action`` (what the env was
      stepped with), ``expert`` (False when a random action was played), ``reward`` (of the played step),
      ``env_id``, ``episode``, ``step``, ``seed`` (the episode's reset seed), ``action_only``.

    Save it with ``ds.save_to_disk(path)`` (reload with ``datasets.load_from_disk``) or share it with
    ``ds.push_to_hub(repo_id)``.
    """
    from datasets import Dataset

    if not 0.0 <= random_action_prob <= 1.0:
        raise ValueError(f"`random_action_prob` must be in [0, 1], got {random_action_prob}.")
    if num_episodes < 1:
        raise ValueError(f"`num_episodes` must be >= 1, got {num_episodes}.")
    task = task if task is not None else get_task(env_id)
    expert = expert if expert is not None else get_expert(env_id)
    env = gym.make(env_id, **(env_kwargs or {}))
    if len(task.action_names) != env.action_space.n:
        raise ValueError(
            f"The task has {len(task.action_names)} action names but {env_id} has {env.action_space.n} actions; "
            "pass the `task` the PPO trainer uses for this env."
        )
    rng = np.random.default_rng(seed)
    rows = []
    for episode, step, observation, info, action, thoughts, played, played_random, reward in expert_steps(
        env, expert, num_episodes, seed, random_action_prob, rng, max_episode_steps
    ):
        prompt, images = prompt_and_images(task.build_messages(observation, info, action_only=action_only))
        if len(images) != 1:
            raise ValueError(f"Expected one image per prompt, got {len(images)}: is the observation a frame?")
        answer = task.example_answer(action, thoughts, action_only=action_only)
        rows.append(
            {
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                "images": [_png(images[0])],
                "action": action,
                "action_name": task.action_names[action],
                "played_action": played,
                "expert": not played_random,
                "reward": float(reward),
                "env_id": env_id,
                "episode": episode,
                "step": step,
                "seed": seed + episode,
                "action_only": action_only,
            }
        )
    env.close()
    return Dataset.from_list(rows, features=sft_features())


def expert_steps(env, expert: ExpertFn, num_episodes: int, seed: int, random_action_prob: float = 0.0, rng=None,
                 max_episode_steps: int = 100):
    """Play ``num_episodes`` episodes of ``env`` (episode ``k`` reset with ``seed + k``) with ``expert``; yield
    ``(episode, step, observation, info, action, thoughts, played, played_random, reward)`` per step, where
    ``action`` is the expert's and ``played`` what the env was stepped with (a random action with probability
    ``random_action_prob``, drawn from ``rng``)."""
    start = int(getattr(env.action_space, "start", 0))
    for episode in range(num_episodes):
        observation, info = env.reset(seed=seed + episode)
        for step in range(max_episode_steps):
            action, thoughts = expert(observation, info, env.unwrapped)
            action = int(action)
            played_random = bool(random_action_prob > 0 and rng.random() < random_action_prob)
            played = int(rng.integers(env.action_space.n)) if played_random else action
            next_observation, reward, terminated, truncated, next_info = env.step(played + start)
            yield episode, step, observation, info, action, thoughts, played, played_random, reward
            if terminated or truncated:
                break
            observation, info = next_observation, next_info


def expert_action_accuracy(agent, env_id: str, num_episodes: int, seed: int, batch_size: int = 8,
                           env_kwargs: dict | None = None) -> dict[str, float]:
    """How often the agent's greedy action equals the expert's on the states the expert visits (episode ``k`` reset
    with ``seed + k``); an invalid output counts as wrong.

    Token accuracy (TRL's ``mean_token_accuracy``) can look converged while the action ignores the image: the answer's
    format tokens are most of the tokens. ``majority_action_accuracy`` is what always answering the expert's most
    common action scores on the same states: an accuracy near it means the model has not learned to tell states apart.
    """
    env = gym.make(env_id, **(env_kwargs or {}))
    states = [(obs, info, action) for _, _, obs, info, action, *_ in expert_steps(env, get_expert(env_id), num_episodes,
                                                                                    seed)]
    env.close()
    correct = 0
    for chunk in range(0, len(states), batch_size):
        part = states[chunk : chunk + batch_size]
        parsed, _ = agent.act_batch([s[0] for s in part], [s[1] for s in part], greedy=True)
        correct += sum(p.valid and p.action == s[2] for p, s in zip(parsed, part))
    counts = np.bincount([s[2] for s in states])
    return {
        "expert_action_accuracy": correct / len(states),
        "majority_action_accuracy": float(counts.max() / len(states)),
        "expert_states": len(states),
    }


def _png(image) -> dict:
    """A frame as PNG bytes for the `datasets.Image` feature: lossless, and ~5 KB instead of the 270 KB of a
    300×300 frame, so generating tens of thousands of rows fits in memory."""
    buffer = io.BytesIO()
    to_pil_image(image).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}

