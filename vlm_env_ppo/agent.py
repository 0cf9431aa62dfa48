"""A saved agent: loading it back (`VLMAgent`), acting with it, and evaluating it on fixed seeds.

A saved agent folder (from `VLMPPOTrainer.save_model`, a checkpoint, or the Hub) holds the policy (a LoRA adapter
or full weights), ``value_head.safetensors``, the processor, and ``vlm_env_ppo.json`` (env id, base model, prompt
variant, generation settings).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from transformers import AutoProcessor, GenerationConfig, PreTrainedTokenizerBase, set_seed

from .actions import ParsedAction
from .envs.adapter import HISTORY, HistoryWrapper, adapted_factory
from .models.loading import (
    auto_model_from_pretrained,
    check_model_path,
    generation_suppress_token_ids,
    get_tokenizer,
)
from .models.value_head import VALUE_HEAD_WEIGHTS, ValueHead, policy_forward
from .rollout import episode_success
from .tasks import Task, get_task, to_pil_image

AGENT_CONFIG = "vlm_env_ppo.json"
ADAPTER_CONFIG = "adapter_config.json"


def build_model_inputs(processing_class, messages: list[list[dict]]) -> dict[str, torch.Tensor]:
    """Batch of chat conversations → left-padded processor outputs (CPU tensors).

    A plain tokenizer (a text-only model, `allow_text_only_model`) gets each message's text parts joined into a
    string; image parts are dropped (the user opted in to a model that cannot see them).
    """
    if isinstance(processing_class, PreTrainedTokenizerBase):
        text_messages = [
            [
                {
                    "role": m["role"],
                    "content": m["content"] if isinstance(m["content"], str) else "\n".join(
                        part["text"] for part in m["content"] if part.get("type") == "text"
                    ),
                }
                for m in conversation
            ]
            for conversation in messages
        ]
        return processing_class.apply_chat_template(
            text_messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            padding=True,
        )
    return processing_class.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )


def fill_image_placeholders(messages: list[dict], observation, info: dict | None) -> list[dict]:
    """Messages from a ``build_messages`` hook, with TRL's image placeholders filled by the step's frames.

    TRL's VLM datasets and examples write ``{"type": "image"}`` parts without the image and pass the images
    separately (`trl.data_utils.prepare_multimodal_messages`). A hook written that way gets its placeholders filled,
    in order, with this step's frames: the frames of the earlier turns in ``info["history"]`` (`HistoryWrapper`,
    oldest first), then the current observation. Parts that carry their image (``{"type": "image", "image": ...}``)
    are left as they are; messages without placeholders come back unchanged.

    Raises:
        ValueError: the number of placeholders is not the number of frames this step has.
    """
    placeholders = sum(
        1
        for m in messages
        if not isinstance(m.get("content"), str)
        for part in m.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "image" and not _has_image(part)
    )
    if not placeholders:
        return messages
    frames = [to_pil_image(turn.get("frame")) for turn in (info or {}).get(HISTORY) or ()]
    frames = [f for f in frames if f is not None]
    history = len(frames)
    current = to_pil_image(observation)
    if current is not None:
        frames.append(current)
    if placeholders != len(frames):
        raise ValueError(
            f"`build_messages` returned {placeholders} image placeholder(s) ({{'type': 'image'}} without an image) "
            f"but this step has {len(frames)} frame(s): {history} from earlier turns in info['history'] and "
            f"{int(current is not None)} for the current observation. Write one placeholder per frame, earlier turns "
            "first (they are filled in that order), or put the image into the part yourself: "
            "{'type': 'image', 'image': PIL.Image}."
        )
    frames_left = iter(frames)
    filled = []
    for m in messages:
        if isinstance(m.get("content"), str) or not m.get("content"):
            filled.append(m)
            continue
        content = [
            {**part, "image": next(frames_left)}
            if isinstance(part, dict) and part.get("type") == "image" and not _has_image(part)
            else part
            for part in m["content"]
        ]
        filled.append({**m, "content": content})
    return filled


def _has_image(part: dict) -> bool:
    # transformers' chat templates also take an image by "url" or "path"
    return any(part.get(key) is not None for key in ("image", "url", "path", "base64"))


def mask_after_eos(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """``(batch, C)`` mask: 1 up to and including the first EOS, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.as_tensor(list(eos_token_ids), device=completion_ids.device))
    no_eos = torch.full_like(is_eos[:, 0], is_eos.shape[1], dtype=torch.long)
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), no_eos)
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    return (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).long()


def eos_token_ids(policy, tokenizer) -> list[int]:
    value = policy.generation_config.eos_token_id
    if value is None:
        value = tokenizer.eos_token_id
    return list(value) if isinstance(value, (list, tuple)) else [value]


# Every `generate` setting that changes which tokens are drawn, or how, pinned to its neutral value. `generate` takes
# whatever is not passed from the model's own `generation_config` (Qwen2.5-VL Instruct ships `repetition_penalty=1.05`,
# others `no_repeat_ngram_size`, `min_p`, ...), and would then sample from another distribution than the plain softmax
# at `temperature` that PPO scores: the rollout's log-probs, ratios and KL would be silently off-policy. Passed as
# keyword arguments, not as a `GenerationConfig`: `generate` fills a passed config's `None` entries from the model's
# config too, while a keyword set to `None` clears the model's value.
NEUTRAL_GENERATION_SETTINGS = {
    # decoding mode: one sequence per prompt, token by token
    "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1, "penalty_alpha": None, "dola_layers": None,
    "constraints": None, "force_words_ids": None, "prompt_lookup_num_tokens": None, "assistant_early_exit": None,
    "use_mtp": None, "token_healing": None,
    # logits processors
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None, "min_length": 0,
    "min_new_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None, "begin_suppress_tokens": None, "guidance_scale": None,
    "watermarking_config": None, "renormalize_logits": False,
    # sampling warpers besides temperature, top-k and top-p (set per call below)
    "min_p": None, "top_h": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    # stopping and output: only EOS and `max_new_tokens` end a completion; plain token ids come back
    "stop_strings": None, "max_time": None, "return_dict_in_generate": False, "output_scores": False,
    "output_logits": False,
}


@functools.cache
def neutral_generation_settings() -> dict:
    """`NEUTRAL_GENERATION_SETTINGS` this transformers version knows: `generate` rejects a keyword it does not."""
    known = GenerationConfig()
    return {k: v for k, v in NEUTRAL_GENERATION_SETTINGS.items() if hasattr(known, k)}


@torch.no_grad()
def generate_completions(
    policy,
    processing_class,
    device_inputs: dict[str, torch.Tensor],
    *,
    greedy: bool,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    suppress_token_ids: Sequence[int],
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One batched `generate` call → ``(completion_ids, completion_mask, texts)``; ids after EOS become padding.

    Sampling draws from the softmax of the logits at ``temperature`` (nucleus-cut at ``top_p``), greedy takes their
    argmax; nothing in the model's ``generation_config`` changes either (`NEUTRAL_GENERATION_SETTINGS`) except its
    EOS ids, which end completions here exactly as they end them in `mask_after_eos`.
    """
    tokenizer = get_tokenizer(processing_class)
    eos_ids = eos_token_ids(policy, tokenizer)
    if greedy:
        sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    else:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    generated = policy.generate(
        **device_inputs,
        **neutral_generation_settings(),
        **sampling,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_token_id,
        suppress_tokens=list(suppress_token_ids) or None,
        # A NaN/inf logit (e.g. a bf16 overflow) would make sampling raise; this replaces them (before suppression,
        # so suppressed tokens stay impossible) and the scoring forward's non-finite log-probs are dealt with by the
        # trainer (the sample's minibatches are skipped and counted).
        remove_invalid_values=True,
    )
    completion_ids = generated[:, device_inputs["input_ids"].shape[1] :]  # (batch, C)
    completion_mask = mask_after_eos(completion_ids, eos_ids)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad_token_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return completion_ids, completion_mask, texts


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
