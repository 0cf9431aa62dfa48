"""How the policy acts: chat messages -> prompt inputs -> one batched `generate` -> scoring.

Shared by training (`VLMPPOTrainer`), evaluation, the saved agent (`VLMAgent`), SFT evaluation and the format warm
start: prompts are built (`build_model_inputs`, `fill_image_placeholders`), completions drawn from the plain softmax
at the sampling temperature (`generate_completions`, `NEUTRAL_GENERATION_SETTINGS`), and the policy and its value
head scored as one module (`PolicyAndValue`: per-token log-probs, entropy, values; `models.value_head.policy_forward`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
from peft import PeftModel
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from .envs.adapter import HISTORY
from .models.loading import get_tokenizer
from .models.value_head import ValueHead, policy_forward
from .tasks import to_pil_image


def build_model_inputs(processing_class, messages: list[list[dict]]) -> dict[str, torch.Tensor]:
    """Batch of chat conversations → left-padded processor outputs (CPU tensors).

    A plain tokenizer (a text-only model, `allow_text_only_model`) gets each message's text parts joined into a
    string; image parts are dropped (the user opted in to a model that cannot see them).
    """
    if isinstance(processing_class, PreTrainedTokenizerBase):
        return processing_class.apply_chat_template(
            [_text_only(conversation) for conversation in messages], add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt", padding=True,
        )
    return processing_class.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )


def prompt_text(processing_class, conversation: list[dict]) -> str:
    """One conversation rendered by the chat template as `build_model_inputs` renders it, as text (a vLLM engine's
    prompt: it runs the processor on this text and the conversation's images itself)."""
    if isinstance(processing_class, PreTrainedTokenizerBase):
        conversation = _text_only(conversation)
    return processing_class.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def _text_only(conversation: list[dict]) -> list[dict]:
    return [
        {
            "role": m["role"],
            "content": m["content"] if isinstance(m["content"], str) else "\n".join(
                part["text"] for part in m["content"] if part.get("type") == "text"
            ),
        }
        for m in conversation
    ]


def fill_image_placeholders(messages: list[dict], observation, info: dict | None) -> list[dict]:
    """Messages from a ``build_messages`` hook, with TRL's image placeholders filled by the step's frames.

    TRL's VLM datasets and examples write ``{"type": "image"}`` parts without the image and pass the images
    separately (`trl.data_utils.prepare_multimodal_messages`). A hook written that way gets its placeholders filled,
    in order, with this step's frames: the frames of the earlier turns in ``info["history"]`` (`HistoryWrapper`,
    oldest first), then the current observation. Parts that carry their image (``{"type": "image", "image": ...}``)
    are left as they are; messages without placeholders come back unchanged.

    The messages are checked first (`check_messages`); an image observation with no image in the messages is
    warned about (once per call site): the agent would never see its frames.

    Raises:
        TypeError: the hook did not return a list of chat messages.
        ValueError: the number of placeholders is not the number of frames this step has.
    """
    check_messages(messages)
    if to_pil_image(observation) is not None and not any(
        isinstance(part, dict) and part.get("type") == "image"
        for m in messages if not isinstance(m.get("content"), str) for part in m.get("content") or ()
    ):
        warnings.warn(
            "`build_messages` put no image into the messages although the observation is an image: the agent never "
            "sees its frames. Add {'type': 'image', 'image': frame} (or a {'type': 'image'} placeholder) to the "
            "content, unless the text alone is meant to carry the observation.",
            stacklevel=2,
        )
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


def check_messages(messages) -> None:
    """Raise `TypeError`, naming the hook, unless ``messages`` is a list of chat messages: dicts with a ``"role"``
    and a ``"content"`` that is a string or a list of dict parts (``{"type": "text", "text": ...}``, ...)."""
    problem = None
    if not isinstance(messages, list) or not messages:
        problem = f"a {type(messages).__name__} {messages!r:.60}"
    else:
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if not isinstance(m, dict) or "role" not in m or not (
                isinstance(content, str) or (isinstance(content, list) and all(isinstance(p, dict) for p in content))
            ):
                problem = f"a message {m!r:.80}"
                break
    if problem is not None:
        raise TypeError(
            f"`build_messages` must return a non-empty list of chat messages, [{{'role': 'user', 'content': [{{'type': "
            f"'image', 'image': frame}}, {{'type': 'text', 'text': prompt}}]}}], but returned {problem}."
        )


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
    logits_processor=None,
    synced_gpus: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One batched `generate` call → ``(completion_ids, completion_mask, texts)``; ids after EOS become padding.

    Sampling draws from the softmax of the logits at ``temperature`` (nucleus-cut at ``top_p``), greedy takes their
    argmax; nothing in the model's ``generation_config`` changes either (`NEUTRAL_GENERATION_SETTINGS`) except its
    EOS ids, which end completions here exactly as they end them in `mask_after_eos`. ``logits_processor``: a
    `GrammarLogitsProcessor` (constrained decoding), applied after suppression and before temperature and top-p.
    ``synced_gpus``: keep generating (dummy steps) until every process is done, where each forward is a collective
    (None: transformers decides; it sees ZeRO-3, not a model that accelerate sharded with FSDP2).
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
        logits_processor=None if logits_processor is None else LogitsProcessorList([logits_processor]),
        synced_gpus=synced_gpus,
    )
    completion_ids = generated[:, device_inputs["input_ids"].shape[1] :]  # (batch, C)
    completion_mask = mask_after_eos(completion_ids, eos_ids)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad_token_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return completion_ids, completion_mask, texts


class PolicyAndValue(nn.Module):
    """The VLM (possibly a PEFT model) and its value head as one module, so optimizer, DDP and checkpoints see both.
    ``value_head=None`` (the critic-free estimators): the forward returns no values and keeps no hidden states."""

    def __init__(self, policy: PreTrainedModel | PeftModel, value_head: ValueHead | None, suppressed_ids=()):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.suppressed_ids = torch.tensor(list(suppressed_ids), dtype=torch.long)  # not a buffer: not checkpointed
        self.config = policy.config
        # FSDP's transformer auto-wrap policy reads the layer classes to shard from here (accelerate fsdp_utils), and
        # raises on a class the model does not contain (LLaVA lists CLIPTextEmbeddings), so keep the present ones.
        base = policy.get_base_model() if isinstance(policy, PeftModel) else policy
        present = {type(m).__name__ for m in base.modules()}
        self._no_split_modules = sorted(n for n in getattr(base, "_no_split_modules", None) or () if n in present)

    def forward(
        self, prompt_inputs, completion_ids, completion_mask, temperature, compute_entropy=False, allowed_tokens=None
    ):
        device = prompt_inputs["input_ids"].device
        if self.suppressed_ids.device != device:  # moved once, not copied to the device on every forward
            self.suppressed_ids = self.suppressed_ids.to(device)
        return policy_forward(
            self.policy, self.value_head, prompt_inputs, completion_ids, completion_mask, temperature, compute_entropy,
            suppressed_ids=self.suppressed_ids, allowed_tokens=allowed_tokens,
        )
