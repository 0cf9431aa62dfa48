"""A saved agent: loading it back (`VLMAgent`), acting with it, and evaluating it on fixed seeds.

A saved agent folder (from `VLMPPOTrainer.save_model`, a checkpoint, or the Hub) holds the policy (a LoRA adapter
or full weights), ``value_head.safetensors``, the processor, and ``vlm_env_ppo.json`` (env id, base model, prompt
variant, generation settings).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from transformers import AutoProcessor, set_seed

from .actions import ParsedAction
from .envs.adapter import HistoryWrapper, adapted_factory
from .models.loading import (
    auto_model_from_pretrained,
    check_model_path,
    generation_suppress_token_ids,
    get_tokenizer,
)
from .models.value_head import VALUE_HEAD_WEIGHTS, ValueHead, policy_forward
from .policy import (  # noqa: F401  (re-exported: `from vlm_env_ppo.agent import build_model_inputs` ...)
    NEUTRAL_GENERATION_SETTINGS,
    build_model_inputs,
    eos_token_ids,
    fill_image_placeholders,
    generate_completions,
    mask_after_eos,
    neutral_generation_settings,
)
from .rollout import episode_success
from .tasks import Task, get_task

AGENT_CONFIG = "vlm_env_ppo.json"
ADAPTER_CONFIG = "adapter_config.json"


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EpisodeRecord:
    """One evaluated episode: its index ``k`` (reset with ``seed + k``), return, length, success, invalid outputs."""

    index: int
    episode_return: float
    length: int
    success: bool
    invalid_steps: int


@dataclass
class EvalResult:
    success_rate: float
    mean_return: float
    mean_episode_length: float
    invalid_action_rate: float
    num_episodes: int
    returns: list[float]
    episodes: list[EpisodeRecord] = field(default_factory=list)

    @classmethod
    def from_episodes(cls, episodes: Sequence[EpisodeRecord]) -> EvalResult:
        """Aggregate per-episode records (in episode order); the invalid-action rate is over all steps."""
        episodes = sorted(episodes, key=lambda e: e.index)
        nan = float("nan")
        mean = lambda xs: float(np.mean(xs)) if len(xs) else nan  # noqa: E731
        steps = sum(e.length for e in episodes)
        return cls(
            success_rate=mean([e.success for e in episodes]),
            mean_return=mean([e.episode_return for e in episodes]),
            mean_episode_length=mean([e.length for e in episodes]),
            invalid_action_rate=sum(e.invalid_steps for e in episodes) / max(steps, 1),
            num_episodes=len(episodes),
            returns=[e.episode_return for e in episodes],
            episodes=episodes,
        )

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        return {
            f"{prefix}/success_rate": self.success_rate,
            f"{prefix}/episode_return": self.mean_return,
            f"{prefix}/episode_length": self.mean_episode_length,
            f"{prefix}/invalid_action_rate": self.invalid_action_rate,
            f"{prefix}/episodes": self.num_episodes,
        }


ActBatch = Callable[[list, list[dict]], list[ParsedAction]]


def random_legal_action(task: Task | None, info: dict, action_space, rng: np.random.Generator) -> int:
    """A random legal action index (the fallback for an invalid output outside training)."""
    return task.sample_action(info, rng) if task is not None else int(rng.integers(action_space.n))


def evaluate_episodes(
    act_batch: ActBatch,
    make_env: Callable[[], gym.Env],
    num_episodes: int,
    seed: int,
    batch_size: int = 8,
    max_episode_steps: int = 1000,
    task: Task | None = None,
    episode_indices: Sequence[int] | None = None,
) -> EvalResult:
    """Play ``num_episodes`` episodes, episode ``k`` reset with ``seed + k``, up to ``batch_size`` at a time.

    ``act_batch(observations, infos)`` returns one `ParsedAction` per env; ``task.to_env_action`` turns its index into
    the env's action (without a task: the index plus the `Discrete` space's ``start``). An invalid output is counted
    and plays a random legal action, as in training (`invalid_action="random"`, the paper) — not a fixed action,
    which would score every invalid output as a success wherever that action happens to be right. Torch is seeded
    with ``seed`` and episode ``k``'s fallback RNG with ``(seed, k)``, so evaluations repeat exactly (greedy ones
    whatever the ``batch_size``). ``episode_indices`` plays only those episodes (a process's share of a distributed
    evaluation; merge the shares' ``episodes`` with `EvalResult.from_episodes`).
    """
    set_seed(seed)
    pending = list(range(num_episodes) if episode_indices is None else episode_indices)[::-1]
    envs = [make_env() for _ in range(min(batch_size, len(pending)))]
    state: list[dict | None] = [None] * len(envs)  # per env: episode index, obs, info, return, length, invalid
    records: list[EpisodeRecord] = []

    def start(i: int) -> None:
        if not pending:
            state[i] = None
            return
        k = pending.pop()
        obs, info = envs[i].reset(seed=seed + k)
        rng = np.random.default_rng((seed, k))
        state[i] = {"k": k, "obs": obs, "info": info, "ret": 0.0, "len": 0, "invalid": 0, "rng": rng}

    for i in range(len(envs)):
        start(i)
    while any(s is not None for s in state):
        active = [i for i, s in enumerate(state) if s is not None]
        parsed = act_batch([state[i]["obs"] for i in active], [state[i]["info"] for i in active])
        for i, p in zip(active, parsed):
            s, env = state[i], envs[i]
            index = p.action if p.valid else random_legal_action(task, s["info"], env.action_space, s["rng"])
            s["invalid"] += not p.valid
            if task is not None:
                action = task.to_env_action(index, s["info"], env.action_space)
            else:
                action = index + int(getattr(env.action_space, "start", 0))
            obs, reward, terminated, truncated, info = env.step(action)
            s["ret"] += float(reward)
            s["len"] += 1
            s["obs"], s["info"] = obs, info
            if terminated or truncated or s["len"] >= max_episode_steps:
                success = episode_success(info, float(reward), bool(terminated))
                records.append(EpisodeRecord(s["k"], s["ret"], s["len"], success, s["invalid"]))
                start(i)
    for env in envs:
        env.close()
    return EvalResult.from_episodes(records)


# ---------------------------------------------------------------------------------------------------- the agent
class VLMAgent:
    """A trained agent loaded back for acting and evaluation (no trainer, no optimizer).

    ```python
    agent = VLMAgent.from_pretrained("nl-ppo")          # a saved agent folder or checkpoint
    action, parsed, text = agent.act(frame, info)
    print(agent.evaluate(num_episodes=100, seed=0))
    ```
    """

    def __init__(self, policy, processing_class, value_head: ValueHead | None, task: Task | None, config: dict):
        self.policy = policy.eval()
        self.processing_class = processing_class
        self.value_head = value_head.eval() if value_head is not None else None
        self.task = task
        self.config = config
        tokenizer = get_tokenizer(processing_class)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id = tokenizer.pad_token_id
        self.suppress_token_ids = generation_suppress_token_ids(
            processing_class, policy.config, keep_ids=eos_token_ids(policy, tokenizer)
        )

    @classmethod
    def from_pretrained(
        cls, path: str, task: Task | None = None, device: str | torch.device | None = None, **model_kwargs
    ) -> VLMAgent:
        """Load a saved agent folder (local path or Hub repo id)."""
        check_model_path(path)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            path = snapshot_download(path)
        config = read_agent_config(path)
        policy = load_agent_policy(path, config, is_trainable=False, **model_kwargs)
        processor = AutoProcessor.from_pretrained(path)
        value_head = load_value_head(path) if os.path.isfile(os.path.join(path, VALUE_HEAD_WEIGHTS)) else None
        if task is None and config.get("env_id"):
            task = get_task(config["env_id"])
        device = torch.device(device) if device is not None else policy.device
        policy.to(device)
        if value_head is not None:
            value_head.to(device)
        return cls(policy, processor, value_head, task, config)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def build_messages(self, observation, info: dict) -> list[dict]:
        if self.task is None:
            raise ValueError("This agent has no task: pass `task=` to `VLMAgent.from_pretrained`.")
        return self.task.build_messages(observation, info, action_only=self.config.get("action_only", False))

    def _inputs(self, observations, infos) -> dict[str, torch.Tensor]:
        inputs = build_model_inputs(self.processing_class, [self.build_messages(o, i) for o, i in zip(observations, infos)])
        dtype = self.policy.dtype
        return {k: v.to(self.device, dtype=dtype) if torch.is_floating_point(v) else v.to(self.device) for k, v in inputs.items()}

    @torch.no_grad()
    def act_batch(self, observations, infos: list[dict], greedy: bool = True) -> tuple[list[ParsedAction], list[str]]:
        """Parsed actions and completion texts for a batch of observations (one `generate` call)."""
        _, _, texts = generate_completions(
            self.policy,
            self.processing_class,
            self._inputs(observations, infos),
            greedy=greedy,
            temperature=self.config.get("temperature", 1.0),
            top_p=self.config.get("top_p", 1.0),
            max_new_tokens=self.config.get("max_new_tokens", 256),
            suppress_token_ids=self.suppress_token_ids,
            pad_token_id=self.pad_token_id,
        )
        return [self.task.parse_action(t, i) for t, i in zip(texts, infos)], texts

    def act(self, observation, info: dict, greedy: bool = True) -> tuple[int | None, ParsedAction, str]:
        """``(action or None if invalid, parsed, completion text)`` for one observation."""
        parsed, texts = self.act_batch([observation], [info], greedy=greedy)
        return parsed[0].action, parsed[0], texts[0]

    @torch.no_grad()
    def value(self, observations, infos: list[dict]) -> torch.Tensor:
        """Critic values ``(batch,)`` of observations."""
        if self.value_head is None:
            raise ValueError("This agent was saved without a value head.")
        inputs = self._inputs(observations, infos)
        empty = inputs["input_ids"][:, :0]
        _, _, values = policy_forward(self.policy, self.value_head, inputs, empty, empty, 1.0)
        return values.float().cpu()

    def evaluate(
        self,
        env: str | Callable[[], gym.Env] | None = None,
        num_episodes: int = 32,
        seed: int = 0,
        greedy: bool = True,
        batch_size: int = 8,
        **env_kwargs,
    ) -> EvalResult:
        """Play ``num_episodes`` on seeds ``seed, seed + 1, ...``; greedy by default."""
        return evaluate_episodes(
            lambda obs, infos: self.act_batch(obs, infos, greedy=greedy)[0],
            self.env_factory(env, **env_kwargs),
            num_episodes,
            seed,
            batch_size,
            task=self.task,
        )

    def env_factory(self, env: str | Callable[[], gym.Env] | None = None, **env_kwargs) -> Callable[[], gym.Env]:
        """A zero-argument factory of the env this agent acts in, as the trainer made it: from ``env`` (an id or a
        factory; default the training env id with its ``env_kwargs``), adapted (`vlm_env_ppo.envs.adapter.make_env`)
        and, for an agent trained with ``history_length`` > 0, wrapped in a `HistoryWrapper`."""
        if env is None:
            env = self.config.get("env_id")
            env_kwargs = {**(self.config.get("env_kwargs") or {}), **env_kwargs}
            if env is None:
                raise ValueError("This agent was trained on an env given as a factory: pass `env=`.")
        make = adapted_factory(env, **env_kwargs)
        length = int(self.config.get("history_length") or 0)
        if not length:
            return make
        names = self.task.action_names if self.task is not None else None
        return lambda: HistoryWrapper(make(), length, names)


def read_agent_config(path: str) -> dict:
    """A saved agent's ``vlm_env_ppo.json``, or an SFT model's ``vlm_env_ppo_sft.json`` (`vlm_env_ppo.sft.run_sft`:
    env id, prompt variant and action names of a plain, merged model folder)."""
    from .sft import SFT_CONFIG

    for name in (AGENT_CONFIG, SFT_CONFIG):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as f:
                return json.load(f)
    raise FileNotFoundError(
        f"{path} is not a saved vlm-env-ppo agent (no {AGENT_CONFIG}) nor an SFT model (no {SFT_CONFIG})."
    )


def load_agent_policy(path: str, config: dict, is_trainable: bool, **model_kwargs):
    """The policy of a saved agent: base model + LoRA adapter (a `PeftModel`), or the full fine-tuned model.

    Weights are read from safetensors only (issue 7): a folder with only pickled ``*.bin`` weights is refused, since
    unpickling a downloaded file can run code.
    """
    model_kwargs = {"dtype": "auto", "use_safetensors": True, **model_kwargs}
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        from peft import PeftModel

        if not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
            raise FileNotFoundError(
                f"{path} has an adapter config but no adapter_model.safetensors; only safetensors weights are loaded."
            )
        with open(os.path.join(path, ADAPTER_CONFIG)) as f:
            base = config.get("base_model") or json.load(f)["base_model_name_or_path"]
        base_model = auto_model_from_pretrained(base, **model_kwargs)
        return PeftModel.from_pretrained(base_model, path, is_trainable=is_trainable)
    return auto_model_from_pretrained(path, **model_kwargs)


def load_value_head(path: str) -> ValueHead:
    """Load a value head saved by `VLMPPOTrainer.save_model`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = os.path.join(path, VALUE_HEAD_WEIGHTS)
    with safe_open(file, "pt") as f:
        meta = json.loads(f.metadata()["config"])
    head = ValueHead(meta["hidden_size"], meta["hidden_sizes"])
    head.load_state_dict(load_file(file))
    return head
