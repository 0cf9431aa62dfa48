"""Stage 1 of the paper's pipeline: expert demonstrations from the envs, and an SFT warm start with TRL.

RL4VLM (Zhai et al., NeurIPS 2024) fine-tunes the VLM on instruction-following data (frames with JSON answers whose
reasoning and action are correct) before PPO: RL from a raw model rarely produces a parsable action at all
(its finding). Our envs have exact reference policies (`vlm_env_ppo.envs.solvers`), so that data is generated here:

```python
>>> from vlm_env_ppo.sft import generate_sft_dataset
>>> ds = generate_sft_dataset("gym_cards/NumberLine-v0", num_episodes=2, seed=0)
>>> row = ds[0]
>>> row["completion"][0]["content"][0]["text"]
'{"thoughts": "The current number is 3 and the target is 5; 3 < 5, so I add one.", "action": "+"}'
>>> row["action"], row["action_name"], row["images"][0].size
(1, '+', (300, 300))

```

then ``run_sft(model, ds, default_sft_config("nl-sft"))`` fine-tunes with TRL's `SFTTrainer` (LoRA by default),
merges the adapter and saves a full model + processor, and ``VLMPPOTrainer("nl-sft", ...)`` starts PPO from it.
`evaluate_policy` measures valid-action and success rates before and after; ``vlm-env-ppo sft`` does it all from
the command line, and ``examples/sft_then_ppo.py`` is the recipe to copy, with hyperparameters for a 7B model.

Same code path as PPO: each row's prompt is `Task.build_messages` (what `VLMPPOTrainer.build_messages` calls) with
the image moved to the ``images`` column, and its target is `Task.example_answer` (the format `Task.parse_action`
reads). TRL renders the prompt with the processor's chat template and ``add_generation_prompt=True``, as the
trainer's `build_model_inputs` does, so SFT and PPO see the same prompt tokens (``tests/test_sft.py`` checks it).

Dataset format: TRL's *conversational prompt-completion* with an ``images`` column (one image per row). Chosen over
``messages`` because SFTTrainer then trains on the completion only (``completion_only_loss`` defaults to True for
prompt-completion data) with any chat template, whereas ``assistant_only_loss`` needs ``{% generation %}`` markers
that most VLM templates lack.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from . import envs as _envs  # noqa: F401  (registers the environments)
from .envs.formula import BLANK, DEFAULT_RULES, join_formula
from .envs.probe import COLORS
from .envs.solvers import blackjack_basic_strategy, number_line_oracle, solve_points
from .saved_agent import SFT_CONFIG
from .tasks import Task, get_task, to_pil_image

logger = logging.getLogger(__name__)

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


def _join(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


EXPERTS: dict[str, ExpertFn] = {
    "gym_cards/NumberLine-v0": number_line_expert,
    "gym_cards/EZPoints-v0": points_expert,
    "gym_cards/Points24-v0": points_expert,
    "gym_cards/Blackjack-v0": blackjack_expert,
    "vlm_env_ppo/ColorChoice-v0": color_choice_expert,
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


# ---------------------------------------------------------------------------------------------------- training
def default_lora_config(r: int = 16, lora_alpha: int = 32, target_modules="all-linear", **kwargs):
    """The default LoRA of `run_sft`: all linear layers (the paper's choice; paper r=128, alpha=256 on 7B)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules, task_type="CAUSAL_LM", **kwargs)


# Where our SFT defaults differ from `trl.SFTConfig`'s. ``max_length=None``: TRL's 1024 would cut into the image
# tokens of a 300×300 frame on LLaVA-1.6 (several thousand tokens), which fails ("Image features and image tokens do
# not match"); our prompts are one frame and a short text, so nothing needs truncating.
_SFT_DEFAULTS = {"max_length": None, "report_to": "none"}


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def default_sft_config(output_dir: str, **overrides):
    """`trl.SFTConfig` with defaults that suit generated VLM data: no truncation (``max_length=None``), bf16 only on
    a GPU that supports it (TRL's default ``bf16=True`` fails on a CPU), no reporting. ``overrides`` win."""
    from trl import SFTConfig

    kwargs = dict(output_dir=output_dir, **_SFT_DEFAULTS, bf16=_bf16_supported())
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


_DEFAULT_LORA = "default"


def run_sft(
    model,
    train_dataset,
    args=None,
    *,
    peft_config=_DEFAULT_LORA,
    processing_class=None,
    env_id: str | None = None,
    action_only: bool | None = None,
    resume_from_checkpoint: str | bool | None = None,
) -> str:
    """Fine-tune ``model`` on ``train_dataset`` (from `generate_sft_dataset`) with TRL's `SFTTrainer`, then save a
    full model + processor into ``args.output_dir`` and return that path.

    Args:
        model: a Hub id, a local path or a loaded VLM (`AutoModelForImageTextToText`).
        train_dataset: prompt-completion rows with an ``images`` column (`generate_sft_dataset`, possibly
            concatenated over envs or loaded with `datasets.load_from_disk`).
        args: a `trl.SFTConfig`; defaults to `default_sft_config` with ``output_dir="sft-output"``. Its
            ``model_init_kwargs`` apply when ``model`` is a path.
        peft_config: a `peft.PeftConfig`; ``"default"`` is `default_lora_config()` (LoRA r=16 on all linear
            layers). ``None`` fine-tunes all weights.
        processing_class: the model's processor; loaded from the model when None.
        env_id, action_only: recorded in ``vlm_env_ppo_sft.json`` next to the model; read from the dataset's
            ``env_id`` / ``action_only`` columns when None (``env_id`` only when the dataset has a single env).
        resume_from_checkpoint: passed to ``SFTTrainer.train`` (a ``checkpoint-N`` folder of ``output_dir``, or
            True for the last one) when ``args.save_strategy`` wrote checkpoints.

    Why merge: the LoRA adapter is merged into the base weights and the folder holds an ordinary full model, so
    ``VLMPPOTrainer(output_dir, ...)`` (or ``vlm-env-ppo train --model_name_or_path output_dir``) loads it like any
    model path, a fresh PPO LoRA goes on top of it, and PPO's adapter-disabled KL reference is then the SFT policy,
    not the raw base model. A 4-bit (QLoRA) base cannot take merged weights: the base is reloaded unquantized in
    ``model_init_kwargs["dtype"]`` (default bfloat16) and the adapter merged into it.
    """
    import torch
    from trl import SFTTrainer

    from . import models as _models  # noqa: F401  (lets tiny Qwen2.5-VL processors load without torchvision)

    args = args if args is not None else default_sft_config("sft-output")
    if isinstance(peft_config, str) and peft_config == _DEFAULT_LORA:
        peft_config = default_lora_config()
    columns = set(train_dataset.column_names)
    if not {"prompt", "completion", "images"} <= columns:
        raise ValueError(
            f"`train_dataset` needs `prompt`, `completion` and `images` columns (see `generate_sft_dataset`); it has "
            f"{sorted(columns)}."
        )
    if env_id is None and "env_id" in columns:
        ids = set(train_dataset.unique("env_id"))
        env_id = ids.pop() if len(ids) == 1 else None
    if action_only is None and "action_only" in columns:
        flags = set(train_dataset.unique("action_only"))
        action_only = flags.pop() if len(flags) == 1 else None

    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_dataset, processing_class=processing_class, peft_config=peft_config
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)

    output_dir = args.output_dir
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        trained = trainer.accelerator.unwrap_model(trainer.model)
        merged = _merge_adapter(trained, args.model_init_kwargs or {})
        base_model = getattr(merged.config, "_name_or_path", None)
        merged.save_pretrained(output_dir, safe_serialization=True)
        trainer.processing_class.save_pretrained(output_dir)
        trainer.state.save_to_json(os.path.join(output_dir, "trainer_state.json"))
        config = {
            "stage": "sft",
            "env_id": env_id,
            "base_model": base_model,
            "lora": peft_config is not None,
            "action_only": action_only,
            "sft_examples": len(train_dataset),
            "sft_train_loss": next((h["train_loss"] for h in trainer.state.log_history if "train_loss" in h), None),
        }
        if env_id is not None:
            try:
                config["action_names"] = list(get_task(env_id).action_names)
            except KeyError:
                pass
        with open(os.path.join(output_dir, SFT_CONFIG), "w") as f:
            json.dump(config, f, indent=2)
    trainer.accelerator.wait_for_everyone()
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return output_dir


def _merge_adapter(model, model_init_kwargs: dict):
    """A plain model with the LoRA merged in (the model itself when it has no adapter)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return model.merge_and_unload()
    import tempfile

    import torch
    from transformers import AutoModelForImageTextToText

    base_path = model.peft_config[model.active_adapter].base_model_name_or_path
    dtype = model_init_kwargs.get("dtype", torch.bfloat16)
    logger.info("Merging the adapter into an unquantized copy of %s (%s).", base_path, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=dtype)
        return PeftModel.from_pretrained(base, tmp).merge_and_unload()


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_policy(
    model,
    env_id: str,
    num_episodes: int = 32,
    seed: int = 1_000_000,
    *,
    processing_class=None,
    action_only: bool = False,
    greedy: bool = True,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    task: Task | None = None,
    env_kwargs: dict | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Valid-action and success rates of ``model`` (a path or a loaded VLM) on fresh episodes of ``env_id``.

    Plays episode ``k`` on seed ``seed + k`` with the evaluation harness (`vlm_env_ppo.agent.evaluate_episodes`
    through `VLMAgent`: the trainer's prompts, `build_model_inputs` and generation; an invalid output plays a random
    legal action, as in training). The default ``seed`` is `VLMPPOConfig.eval_seed`'s, so SFT and PPO evaluations play the same episodes.
    ``max_new_tokens`` must fit the longest answer (the paper's 256 does). A path is loaded (safetensors only) in its
    saved dtype onto ``device`` (default: CUDA when available). Returns ``{"valid_action_rate", "success_rate",
    "episode_return", "episode_length", "episodes"}`` and, for envs with an expert, `expert_action_accuracy`'s
    ``expert_action_accuracy`` and ``majority_action_accuracy`` (the expert's states of the same seeds).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from . import models as _models  # noqa: F401
    from .agent import VLMAgent

    if isinstance(model, str):
        policy = AutoModelForImageTextToText.from_pretrained(model, dtype="auto", use_safetensors=True)
        processing_class = processing_class or AutoProcessor.from_pretrained(model)
        policy.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        policy = model
        if processing_class is None:
            raise ValueError("Pass `processing_class=` with a loaded model.")
    task = task if task is not None else get_task(env_id)
    config = {"env_id": env_id, "action_only": action_only, "max_new_tokens": max_new_tokens}
    agent = VLMAgent(policy, processing_class, None, task, config)
    result = agent.evaluate(
        env_id, num_episodes=num_episodes, seed=seed, greedy=greedy, batch_size=batch_size, **(env_kwargs or {})
    )
    accuracy = {}
    if env_id in EXPERTS:
        accuracy = expert_action_accuracy(agent, env_id, num_episodes, seed, batch_size, env_kwargs)
    return {
        "valid_action_rate": 1.0 - result.invalid_action_rate,
        "success_rate": result.success_rate,
        "episode_return": result.mean_return,
        "episode_length": result.mean_episode_length,
        "episodes": result.num_episodes,
        **accuracy,
    }


# ---------------------------------------------------------------------------------------------------- command line
SFT_QUICKSTART_CONFIG = "sft_quickstart.yaml"  # in vlm_env_ppo/configs


@dataclass
class SFTScriptArguments:
    """Arguments of ``vlm-env-ppo sft`` that are not `trl.SFTConfig` or `trl.ModelConfig` fields."""

    env_id: str = field(default="gym_cards/NumberLine-v0", metadata={"help": "Env to generate expert data from."})
    num_episodes: int = field(default=1000, metadata={"help": "Expert episodes to generate (one row per step)."})
    dataset_seed: int = field(default=0, metadata={"help": "Episode k of the generated data is reset with seed + k."})
    action_only: bool = field(default=False, metadata={"help": "Action-only answers (the no-CoT prompt)."})
    random_action_prob: float = field(
        default=0.0,
        metadata={
            "help": "Probability of playing a random action instead of the expert's while "
            "generating (off-path states; the target stays the expert's)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Train on this saved dataset (a `save_to_disk` folder or a Hub dataset id) "
            "instead of generating one."
        },
    )
    dataset_dir: str | None = field(default=None, metadata={"help": "Save the generated dataset here."})
    push_dataset_to_hub: str | None = field(default=None, metadata={"help": "Push the dataset to this Hub repo id."})
    tiny_family: str = field(
        default="llava_next", metadata={"help": "Tiny VLM family built locally when no `--model_name_or_path`."}
    )
    full_finetune: bool = field(default=False, metadata={"help": "Train all weights instead of a LoRA adapter."})
    eval_episodes: int = field(
        default=32, metadata={"help": "Evaluate before and after SFT on this many episodes (0 skips)."}
    )
    eval_seed: int = field(
        default=1_000_000,
        metadata={"help": "Evaluation episode k is reset with seed + k (as `VLMPPOConfig.eval_seed`)."},
    )
    eval_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Generation budget per evaluation step; default: the longest target answer + 16 tokens."},
    )


def ppo_command(model_args, sft_dir: str, env_id: str, action_only: bool) -> str:
    """The ``vlm-env-ppo train`` command that continues from an SFT folder (printed by ``vlm-env-ppo sft``).

    For the tiny quickstart: the PPO quickstart config without its format warm start (the SFT model already answers
    in format; a warm start on random actions would undo the SFT). For a real model: the paper's LoRA; the other
    `VLMPPOConfig` defaults are the paper's (temperature 0.2, 256 new tokens, ...).
    """
    variant = f"--action_only {'true' if action_only else 'false'}"
    if model_args.model_name_or_path is None:
        from importlib import resources

        config = resources.files("vlm_env_ppo") / "configs" / "quickstart.yaml"
        return (
            f"vlm-env-ppo train --config {config} --model_name_or_path {sft_dir} --env_id {env_id} {variant} "
            f"--warm_start_steps 0 --temperature 0.2 --max_new_tokens 96 --learning_rate 1e-4 --output_dir {sft_dir}-ppo"
        )
    return (
        f"vlm-env-ppo train --model_name_or_path {sft_dir} --env_id {env_id} {variant} --use_peft --lora_r 128 "
        f"--lora_alpha 256 --lora_target_modules all-linear --output_dir {sft_dir}-ppo"
    )


def longest_answer_tokens(model: str, dataset, revision: str | None = None) -> int:
    """Tokens (with EOS) of the longest target answer of ``dataset`` under ``model``'s tokenizer."""
    from transformers import AutoProcessor

    from . import models as _models  # noqa: F401

    tokenizer = getattr(AutoProcessor.from_pretrained(model, revision=revision), "tokenizer", None)
    texts = [completion[0]["content"][0]["text"] for completion in dataset["completion"]]
    return max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts) + 1


def sft_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig), prog="vlm-env-ppo sft")
    parser.set_defaults(**_SFT_DEFAULTS, bf16=_bf16_supported())  # a YAML --config and flags still override them
    return parser


def sft_main(argv: list[str]) -> dict:
    """``vlm-env-ppo sft``: generate (or load) expert data, evaluate, fine-tune with `run_sft`, evaluate again.

    With no ``--model_name_or_path`` and no ``--config`` it runs the embedded quickstart
    (``configs/sft_quickstart.yaml``): a tiny VLM built locally learns ColorChoice from expert data on a CPU.
    Returns ``{"output_dir", "examples", "before", "after"}`` (the evaluation dicts of `evaluate_policy`).
    """
    from importlib import resources

    from datasets import load_dataset, load_from_disk
    from trl import get_peft_config

    from .models.loading import model_init_kwargs
    from .models.tiny import build_tiny_vlm

    argv = list(argv)
    if not any(a == "--config" or a.startswith(("--config=", "--model_name_or_path")) for a in argv):
        argv = ["--config", str(resources.files("vlm_env_ppo") / "configs" / SFT_QUICKSTART_CONFIG), *argv]
    script_args, args, model_args = sft_parser().parse_args_and_config(argv)

    # 1. Data: generated with the env's expert, or a saved dataset.
    if script_args.dataset_name:
        name = script_args.dataset_name
        dataset = load_from_disk(name) if os.path.isdir(name) else load_dataset(name, split="train")
    else:
        dataset = generate_sft_dataset(
            script_args.env_id,
            script_args.num_episodes,
            script_args.dataset_seed,
            action_only=script_args.action_only,
            random_action_prob=script_args.random_action_prob,
        )
    if script_args.dataset_dir:
        dataset.save_to_disk(script_args.dataset_dir)
    if script_args.push_dataset_to_hub:
        dataset.push_to_hub(script_args.push_dataset_to_hub)
    env_ids = set(dataset.unique("env_id")) if "env_id" in dataset.column_names else {script_args.env_id}
    env_id = env_ids.pop() if len(env_ids) == 1 else script_args.env_id
    flags = set(dataset.unique("action_only")) if "action_only" in dataset.column_names else set()
    action_only = flags.pop() if len(flags) == 1 else script_args.action_only

    # 2. Model and LoRA, from the `trl.ModelConfig` flags (as TRL's own `sft` script).
    model = model_args.model_name_or_path or build_tiny_vlm(
        script_args.tiny_family, os.path.join(args.output_dir, "tiny-base-model"), seed=args.seed
    )
    args.model_init_kwargs = model_init_kwargs(model_args, args.model_init_kwargs)
    peft_config = None
    if not script_args.full_finetune:
        model_args.use_peft = True
        model_args.lora_target_modules = model_args.lora_target_modules or "all-linear"
        peft_config = get_peft_config(model_args)

    # 3. Evaluate, fine-tune, evaluate.
    max_new_tokens = script_args.eval_max_new_tokens
    if script_args.eval_episodes and max_new_tokens is None:
        max_new_tokens = longest_answer_tokens(model, dataset, model_args.model_revision) + 16

    def evaluate(path):
        if not script_args.eval_episodes or args.process_index != 0:  # with several processes, only the first
            return None
        return evaluate_policy(
            path,
            env_id,
            script_args.eval_episodes,
            script_args.eval_seed,
            action_only=action_only,
            max_new_tokens=max_new_tokens,
        )

    before = evaluate(model)
    output_dir = run_sft(model, dataset, args, peft_config=peft_config, env_id=env_id, action_only=action_only)
    after = evaluate(output_dir)

    summary = f"\nvlm-env-ppo sft: {len(dataset)} expert steps on {env_id}."
    if before and after:
        summary += (
            f" Greedy evaluation on {script_args.eval_episodes} episodes: valid-action rate "
            f"{before['valid_action_rate']:.2f} -> {after['valid_action_rate']:.2f}, success rate "
            f"{before['success_rate']:.2f} -> {after['success_rate']:.2f}."
        )
        if "expert_action_accuracy" in after:
            summary += (
                f" Action accuracy against the expert on its own states: {before['expert_action_accuracy']:.2f} -> "
                f"{after['expert_action_accuracy']:.2f} (always the most common action: "
                f"{after['majority_action_accuracy']:.2f})."
            )
    print(
        f"{summary} Model saved to {output_dir}. Continue with PPO:\n  {ppo_command(model_args, output_dir, env_id, action_only)}"
    )
    return {"output_dir": output_dir, "examples": len(dataset), "before": before, "after": after}
