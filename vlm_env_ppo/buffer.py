"""Rollout storage: ``(num_steps, num_envs)`` tensors plus per-sample model inputs, and minibatch collation.

Prompts (with their images) and completions differ in length per sample, so model inputs are kept per sample,
unpadded and on the CPU, and padded again for whatever micro-batch the update draws (prompts left-padded,
completions right-padded, matching generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .models.value_head import PER_TOKEN_KEYS

Sample = dict[str, torch.Tensor]


def split_inputs(
    inputs: dict[str, torch.Tensor],
    batch_size: int,
    images_per_sample: list[int] | None = None,
    image_token_ids: Sequence[int] | None = None,
) -> list[Sample]:
    """Split a batched processor output into ``batch_size`` per-sample input dicts.

    Token-level keys lose their (left) padding. Every other tensor is cut along its first dimension, by the first
    rule that fits its number of rows ``N``:

    1. Qwen-VL's flattened patches (``pixel_values`` with ``image_grid_thw``): each image's rows are its grid's
       ``t·h·w``, and ``image_grid_thw`` has one row per image.
    2. One row per image (LLaVA's ``pixel_values`` and ``image_sizes``, Gemma 3's ``pixel_values``): ``N`` is the
       number of images, cut by ``images_per_sample``.
    3. One row per prompt (Idefics3 / SmolVLM pad each prompt's images into one row): ``N == batch_size``, every
       prompt holding an image.
    4. Rows in proportion to each prompt's image tokens in ``input_ids`` (``image_token_ids``): processors that
       cut an image into a variable number of tiles or crops, each worth the same number of image tokens
       (InternVL's tiles, Gemma 3's pan-and-scan crops) and stack all of them in one tensor.

    Prompts with different numbers of images (multi-turn history early in an episode) need ``images_per_sample``;
    without it rule 2 cannot apply. A tensor no rule fits raises a `ValueError`: override
    `VLMPPOTrainer.build_model_inputs` to return outputs these rules can split (e.g. one row per image).
    """
    if images_per_sample is not None and len(images_per_sample) != batch_size:
        raise ValueError(f"`images_per_sample` has {len(images_per_sample)} entries for {batch_size} prompts.")
    # With one image per prompt, per-image and per-prompt rows coincide; otherwise per-image rows are cut by count.
    by_image = images_per_sample is not None and any(c != 1 for c in images_per_sample)
    mask = inputs["attention_mask"].bool()
    samples: list[Sample] = [{} for _ in range(batch_size)]
    for i in range(batch_size):
        for key in ("input_ids", *PER_TOKEN_KEYS):
            if key in inputs:
                samples[i][key] = inputs[key][i][mask[i]]
    token_keys = {"input_ids", *PER_TOKEN_KEYS}
    image_tokens = None
    if image_token_ids is not None and len(image_token_ids):
        ids = torch.as_tensor(list(image_token_ids), device=inputs["input_ids"].device)
        image_tokens = (torch.isin(inputs["input_ids"], ids) & mask).sum(dim=1).tolist()
    every_prompt_has_images = images_per_sample is None or all(c > 0 for c in images_per_sample)
    grid = inputs.get("image_grid_thw")
    for key, value in inputs.items():
        if key in token_keys or value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Processor output {key!r} is a {type(value).__name__}, expected a tensor.")
        rows = value.shape[0] if value.dim() else None
        if grid is not None and key in ("pixel_values", "image_grid_thw"):
            if images_per_sample is not None:
                counts = list(images_per_sample)
            elif grid.shape[0] % batch_size:
                raise ValueError(
                    f"Every prompt must carry the same number of images; got {grid.shape[0]} images for "
                    f"{batch_size} prompts."
                )
            else:
                counts = [grid.shape[0] // batch_size] * batch_size
            if key == "image_grid_thw":
                pieces = list(value.split(counts))
            else:
                patches = [int(g.prod(dim=-1).sum()) for g in grid.split(counts)]
                pieces = list(value.split(patches))
        elif by_image and rows == sum(images_per_sample) == batch_size:
            raise ValueError(
                f"Cannot tell per-image from per-prompt rows of processor output {key!r} with {images_per_sample} "
                "images per prompt: give every prompt at least one image, or none."
            )
        elif by_image and rows == sum(images_per_sample):  # one row per image
            pieces = list(value.split(images_per_sample))
        elif rows == batch_size and every_prompt_has_images:  # one row per prompt
            pieces = list(value.split(1))
        elif (split := _rows_by_image_tokens(rows, image_tokens)) is not None:
            pieces = list(value.split(split))
        elif rows == batch_size:
            pieces = list(value.split(1))
        else:
            tokens = f"; image tokens per prompt: {image_tokens}" if image_tokens is not None else ""
            raise ValueError(
                f"Cannot split processor output {key!r} of shape {tuple(value.shape)} into {batch_size} samples "
                f"(images per prompt: {images_per_sample}{tokens}): its rows are neither one per prompt, one per "
                "image, nor in proportion to each prompt's image tokens. Override `VLMPPOTrainer.build_model_inputs` "
                "to return processor outputs with one row per image or per prompt."
            )
        for i, piece in enumerate(pieces):
            samples[i][key] = piece
    return samples


def _rows_by_image_tokens(rows: int | None, image_tokens: list[int] | None) -> list[int] | None:
    """Rows per prompt in proportion to its image tokens, when that gives whole rows for every prompt; else None.

    A tile or crop is worth the same number of image tokens wherever it is, so a prompt with ``k`` of the batch's
    ``T`` image tokens owns ``k · rows / T`` rows.
    """
    if rows is None or not image_tokens or sum(image_tokens) == 0:
        return None
    total = sum(image_tokens)
    if any(k * rows % total for k in image_tokens):
        return None
    return [k * rows // total for k in image_tokens]


def _pad_to(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(tensor.shape) == shape:
        return tensor
    out = tensor.new_zeros(shape)
    out[tuple(slice(0, s) for s in tensor.shape)] = tensor
    return out


def collate_inputs(samples: list[Sample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Inverse of `split_inputs` for any subset of samples: left-pads token keys, concatenates vision keys."""
    batch: dict[str, torch.Tensor] = {}
    lengths = [s["input_ids"].shape[0] for s in samples]
    max_len = max(lengths)
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "input_ids" or key in PER_TOKEN_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            out = values[0].new_full((len(values), max_len), fill)
            for i, v in enumerate(values):
                out[i, max_len - v.shape[0] :] = v
            batch[key] = out
        else:
            # Same-size frames give equal shapes; otherwise zero-pad trailing dims (LLaVA-NeXT pads patches so).
            trailing = tuple(max(v.shape[d] for v in values) for d in range(1, values[0].dim()))
            batch[key] = torch.cat([_pad_to(v, (v.shape[0], *trailing)) for v in values], dim=0)
    return batch


def pad_completions(completions: list[torch.Tensor], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad completion ids → ``(ids, mask)``, both ``(batch, max_len)``."""
    max_len = max(1, max(c.shape[0] for c in completions))
    ids = torch.full((len(completions), max_len), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(completions), max_len), dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, : c.shape[0]] = c
        mask[i, : c.shape[0]] = 1
    return ids, mask


@dataclass
class RolloutBatch:
    """One update's worth of experience. Scalars are ``(num_steps, num_envs)``; samples are flat, step-major."""

    num_steps: int
    num_envs: int
    prompts: list[Sample] = field(default_factory=list)  # num_steps * num_envs, index t * num_envs + e
    completions: list[torch.Tensor] = field(default_factory=list)  # same order, unpadded, up to and incl. EOS
    action_token_starts: list[int] = field(default_factory=list)  # same order
    texts: list[str] = field(default_factory=list)  # decoded completions, for logging
    # same order: the grammar each completion was generated under (constrained decoding; None: unconstrained), from
    # which the update replays its per-position token masks
    grammars: list[str | None] = field(default_factory=list)

    def __post_init__(self):
        shape = (self.num_steps, self.num_envs)
        self.logprobs = torch.zeros(shape)  # λ-weighted action log-probs at rollout
        # the same, under the distribution that sampled them: the vLLM engine's (rollout_backend="vllm"), else equal
        self.sampler_logprobs = torch.zeros(shape)
        self.values = torch.zeros(shape)
        self.rewards = torch.zeros(shape)  # env reward + invalid penalty - kl_coef * kl
        self.env_rewards = torch.zeros(shape)
        self.kl = torch.zeros(shape)
        self.terminated = torch.zeros(shape, dtype=torch.bool)
        self.truncated = torch.zeros(shape, dtype=torch.bool)
        self.final_values = torch.zeros(shape)  # value of the final observation where truncated
        self.valid = torch.zeros(shape, dtype=torch.bool)
        self.completion_lengths = torch.zeros(shape, dtype=torch.long)
        self.next_value = torch.zeros(self.num_envs)
        self.advantages = torch.zeros(shape)
        self.returns = torch.zeros(shape)
        # the group round of each step (critic-free estimators, `vlm_env_ppo.groups`); -1: none, or no groups
        self.rounds = torch.full(shape, -1, dtype=torch.long)

    def __len__(self) -> int:
        return self.num_steps * self.num_envs

    def minibatch(self, indices: torch.Tensor, pad_token_id: int) -> dict[str, object]:
        """Collated model inputs and flat targets for the given flat sample indices."""
        idx = indices.tolist()
        prompt_inputs = collate_inputs([self.prompts[i] for i in idx], pad_token_id)
        completion_ids, completion_mask = pad_completions([self.completions[i] for i in idx], pad_token_id)
        flat = lambda t: t.reshape(-1)[indices]  # noqa: E731
        return {
            "prompt_inputs": prompt_inputs,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "action_token_starts": [self.action_token_starts[i] for i in idx],
            "grammars": [self.grammars[i] for i in idx] if self.grammars else [None] * len(idx),
            "old_logprobs": flat(self.logprobs),
            "sampler_logprobs": flat(self.sampler_logprobs),
            "old_values": flat(self.values),
            "advantages": flat(self.advantages),
            "returns": flat(self.returns),
        }
