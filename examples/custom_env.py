"""Your own environment, end to end: a gymnasium env drawn with Pillow, your own prompt, parser and answer grammar in
a `Task` subclass, then the trained agent evaluated, replayed and shared on the Hub with them.

    python examples/custom_env.py          # tiny VLM built locally, CPU, ~15 s (a smoke run: it learns nothing)
    python examples/custom_env.py --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --dtype bfloat16 \\
        --lora_r 128 --lora_alpha 256 --learning_rate 1e-5 --num_steps 128 --total_env_steps 15000 \\
        --max_new_tokens 256 --activation_checkpointing true --final_eval_episodes 200 --output_dir goal-grid-qwen \\
        --push_to_hub true --hub_model_id you/goal-grid-qwen

    # then, in any shell where this module is importable (here: its folder on PYTHONPATH; or your installed package)
    PYTHONPATH=examples vlm-env-ppo eval goal-grid-ppo --trust_remote_code
    PYTHONPATH=examples vlm-env-ppo play goal-grid-ppo --trust_remote_code --env_kwargs '{"size": 6}'
    PYTHONPATH=examples vlm-env-ppo eval you/goal-grid-qwen --trust_remote_code          # from the Hub

It takes every flag of ``vlm-env-ppo train --help`` (the same parser); `DEFAULTS` below are the tiny CPU settings.

What it shows:

1. `GoalGridEnv`, a 5x5 grid world: the agent (blue circle) walks to the goal (green square). Pillow draws each
   ``rgb_array`` frame (H x W x 3 uint8); the actions are ``Discrete(4)``. It is registered as ``GoalGrid-v0``, so
   that the saved agent names its env and ``vlm-env-ppo eval/play`` can make it again. Any gymnasium env with image
   observations (or ``render_mode="rgb_array"``) and Discrete actions works the same way.
2. `GoalGridTask(Task)`, everything the agent needs to know about the env, in one object:
   - ``build_messages(observation, info)``: the chat messages for one step (image + prompt). Here the answer format
     is not the built-in JSON: the model reasons, then ends with a line ``Move: <direction>``.
   - ``parse_action(completion, info)``: the completion -> `ParsedAction(action, valid, action_start)`. It must
     never raise: anything it cannot read is ``valid=False`` (counted in ``env/invalid_action_rate``; the trainer
     plays a random action). ``action_start`` is the character where the action part begins: the tokens before it
     are the reasoning, whose log-probs get the weight ``cot_logprob_coef`` (the paper's lambda).
   - ``answer_grammar(info, constraint)``: the grammar generation follows under constrained decoding (the default),
     so that every answer parses from the first rollout on.
   - the action names, in the env's index order.
3. `build_trainer(..., task=TASK)` and `run_training`, as ``vlm-env-ppo train``. The saved agent records the task
   as ``"custom_env:GoalGridTask"`` plus its fields (``vlm_env_ppo.json``): `VLMAgent.from_pretrained(path,
   trust_remote_code=True)`, ``vlm-env-ppo eval/play --trust_remote_code`` and an agent downloaded from the Hub
   import this module again to act exactly as in training. Without ``trust_remote_code`` they refuse, in one line:
   importing a module runs its code.

Overriding the same three hooks on a `VLMPPOTrainer` subclass still works (the agent then records the trainer class);
the `Task` subclass is the simpler way, as it is also what `VLMAgent` and SFT use. For a task with a fixed action
vocabulary and the JSON format you need no subclass at all: pass ``task=vlm_env_ppo.Task(env_id, action_names,
description)`` to the trainer (see `vlm_env_ppo.tasks`); such an agent loads back without ``trust_remote_code``.
"""

from __future__ import annotations

import re
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from vlm_env_ppo import ParsedAction, Task
from vlm_env_ppo.cli import build_trainer, parse_train_args, run_training

ACTIONS = ("up", "down", "left", "right")
MOVES = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}  # action -> (row, column) step


class GoalGridEnv(gym.Env):
    """Walk to the goal on a ``size`` x ``size`` grid.

    Actions: ``Discrete(4)``, up / down / left / right (a move into the wall stays put). Observation: a
    ``(40 * size, 40 * size, 3)`` uint8 frame. Reward: +1 on reaching the goal (terminates), -0.1 per other step.
    Truncated after ``3 * size`` steps. ``info`` has the positions and ``is_success``.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"]}
    CELL = 40

    def __init__(self, size: int = 5, render_mode: str | None = "rgb_array"):
        self.size, self.render_mode = size, render_mode
        self.action_space = spaces.Discrete(len(ACTIONS))
        self.observation_space = spaces.Box(0, 255, (self.CELL * size, self.CELL * size, 3), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)  # seeds self.np_random: episodes repeat exactly
        cells = self.np_random.choice(self.size * self.size, size=2, replace=False)
        self.agent, self.goal = [tuple(int(v) for v in divmod(int(c), self.size)) for c in cells]
        self.steps = 0
        return self.render(), self._info(False)

    def step(self, action):
        dr, dc = MOVES[int(action)]
        self.agent = (min(max(self.agent[0] + dr, 0), self.size - 1), min(max(self.agent[1] + dc, 0), self.size - 1))
        self.steps += 1
        terminated = self.agent == self.goal
        truncated = not terminated and self.steps >= 3 * self.size
        return self.render(), 1.0 if terminated else -0.1, terminated, truncated, self._info(terminated)

    def _info(self, success: bool) -> dict:
        return {"agent": self.agent, "goal": self.goal, "is_success": success}

    def render(self) -> np.ndarray:
        c = self.CELL
        image = Image.new("RGB", (c * self.size, c * self.size), "white")
        draw = ImageDraw.Draw(image)
        for k in range(self.size + 1):
            draw.line([(k * c, 0), (k * c, c * self.size)], fill="gray")
            draw.line([(0, k * c), (c * self.size, k * c)], fill="gray")
        (gr, gc), (ar, ac) = self.goal, self.agent
        draw.rectangle([gc * c + 6, gr * c + 6, gc * c + c - 6, gr * c + c - 6], fill="green")
        draw.ellipse([ac * c + 8, ar * c + 8, ac * c + c - 8, ar * c + c - 8], fill="blue")
        return np.asarray(image)


PROMPT = (
    "You are the blue circle on a 5x5 grid seen from above; the green square is the goal. Reach it. "
    f"Each step you move one square: {', '.join(ACTIONS)}. Think about where you are and where the goal is, "
    "then end your answer with one line: Move: <direction>"
)
MOVE_RE = re.compile(r"move:\s*(up|down|left|right)\b", re.IGNORECASE)


class GoalGridTask(Task):
    """The prompt, parser and grammar of `GoalGridEnv` (a `Task`: its fields are the env id, action names and
    description; the agent saved after training records them, and this class's import path)."""

    def build_messages(self, observation, info: dict | None = None, action_only: bool = False) -> list[dict]:
        image = Image.fromarray(observation)
        content = [{"type": "image", "image": image}, {"type": "text", "text": self.description}]
        return [{"role": "user", "content": content}]

    def parse_action(self, completion: str, info: dict | None = None) -> ParsedAction:
        matches = list(MOVE_RE.finditer(completion)) if isinstance(completion, str) else []
        if not matches:
            return ParsedAction(None, False, None, "no_action_key")
        last = matches[-1]  # a model that corrects itself is judged on its final answer
        return ParsedAction(self.action_names.index(last.group(1).lower()), True, last.start(), "ok")

    def answer_grammar(self, info: dict | None, constraint, action_only: bool = False) -> str:
        # Constrained decoding (on by default): generation follows this grammar (llguidance's Lark), so every answer
        # parses. Reasoning on one line, bounded in tokens so that "Move: <direction>" and EOS always fit
        # max_new_tokens (counted as one token per byte: the worst case), then the move, then EOS.
        closing = len("\nMove: right".encode()) + 1
        directions = " | ".join(f'"{a}"' for a in self.action_names)
        return (
            'start: reasoning "\\nMove: " direction\n'
            f"reasoning[max_tokens={max(1, constraint.max_new_tokens - closing)}]: /[^\\n]*/\n"
            f"direction: {directions}\n"
        )


# The env under an id (what the saved agent records, and `vlm-env-ppo eval/play` makes), and its task.
if "GoalGrid-v0" not in gym.registry:
    gym.register("GoalGrid-v0", entry_point=GoalGridEnv)
TASK = GoalGridTask("GoalGrid-v0", ACTIONS, PROMPT)


# Used unless the command line (or a --config YAML) says otherwise: a short CPU run of a tiny VLM built locally.
DEFAULTS = {
    "output_dir": "goal-grid-ppo",
    "env_id": "GoalGrid-v0",
    "num_envs": 4,
    "num_steps": 8,
    "total_env_steps": 64,  # 2 PPO updates; episodes last up to 15 steps
    "max_new_tokens": 24,
    "num_mini_batches": 2,
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-4,
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_target_modules": "all-linear",
    "activation_checkpointing": False,
    "final_eval_episodes": 4,
    "report_to": "none",
}


def main(argv: list[str] | None = None) -> dict:
    script_args, args, model_args = parse_train_args(argv, defaults=DEFAULTS)
    trainer = build_trainer(script_args, args, model_args, task=TASK)
    return run_training(trainer, script_args)


if __name__ == "__main__":
    main()
