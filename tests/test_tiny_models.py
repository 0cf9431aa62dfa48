"""The tiny offline VLM factory (`vlm_env_ppo.models.tiny`): every family builds, round-trips through the Auto
classes, generates from left-padded image batches without sampling image tokens, and trains (tier 3)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessor, LogitsProcessorList

from vlm_env_ppo.agent import generate_completions
from vlm_env_ppo.models import (
    TINY_FAMILIES,
    build_tiny_vlm,
    create_tiny_vlm,
    generation_suppress_token_ids,
)
from vlm_env_ppo.models.loading import image_token_ids
from vlm_env_ppo.models.tiny import train_tiny_tokenizer
from vlm_env_ppo.models.value_head import concat_prompt_completion

# What each family loads as, and how many image tokens a 300×300 frame becomes (small on purpose: CPU tests).
EXPECTED = {
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor", 16),
    "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor", 88),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", 36),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor", 20),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", 36),
    "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor", 16),
    "smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor", 20),
    "internvl": ("InternVLForConditionalGeneration", "InternVLProcessor", 20),  # 2×2 tiles + thumbnail, 4 each
}
SPECIAL_TOKENS = {
    "gemma3": ["<start_of_image>", "<end_of_image>", "<image_soft_token>"],
    "internvl": ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
    "smolvlm": ["<video>"],
}
PROMPTS = (
    "Which action?",
    (
        "You see a target number and a current number in the image. Move the current number to the target number, "
        'one step at a time. Answer {"thoughts": "...", "action": "+"}.'
    ),
)


def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)) for _ in range(n)]


def chat(image, text):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def load(path):
    # Exactly what a user does with a Hub id; no trust_remote_code.
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return model.eval(), processor


def batch_inputs(processor, images, texts=PROMPTS):
    chats = [
        processor.apply_chat_template(chat(im, t), add_generation_prompt=True, tokenize=False)
        for im, t in zip(images, texts)
    ]
    # One list of images per prompt: Gemma 3's processor reads a flat list as one prompt's images.
    return processor(text=chats, images=[[im] for im in images], padding=True, return_tensors="pt")


def image_token_id(model):
    return image_token_ids(model.config)[0]


# ------------------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_is_compact_lossless_and_has_a_chat_template():
    tok = train_tiny_tokenizer(special_tokens=("<image>",))
    answer = '{"thoughts": "The current number is 3 and the target number is 4.", "action": "+"}'
    ids = tok.encode(answer, add_special_tokens=False)
    assert tok.decode(ids) == answer
    assert len(ids) <= len(answer) // 3, "the built-in corpus should make task answers compact"
    assert tok.decode(tok.encode("naïve 24 ♠ émoji 🃏", add_special_tokens=False)) == "naïve 24 ♠ émoji 🃏"  # bytes
    assert len(tok.encode("<image>", add_special_tokens=False)) == 1
    assert {tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token} == {"<s>", "</s>", "<pad>", "<unk>"}
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3

    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Go."}]}]
    assert tok.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == (
        "<s><|user|>\n<image>Go.</s>\n<|assistant|>\n"
    )
    plain = [{"role": "user", "content": "Go."}, {"role": "assistant", "content": '{"action": "+"}'}]
    out = tok.apply_chat_template(plain, return_dict=True, return_assistant_tokens_mask=True)
    answer_ids = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(answer_ids) == '{"action": "+"}</s>'  # assistant turn (with EOS) is maskable for SFT


# ------------------------------------------------------------------------------------------------------- building
def test_unknown_family_says_which_exist(tmp_path):
    with pytest.raises(ValueError, match="llava_next"):
        build_tiny_vlm("gpt2", tmp_path)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_round_trip_gives_identical_logits(family, tiny_vlm_path):
    path = tiny_vlm_path(family)
    for name in os.listdir(path):
        if name.endswith(".json"):
            with open(os.path.join(path, name)) as f:
                assert "auto_map" not in json.load(f), f"{name} would need trust_remote_code"
    model, processor = load(path)
    model_cls, processor_cls, _ = EXPECTED[family]
    assert type(model).__name__ == model_cls and type(processor).__name__ == processor_cls
    assert sum(p.numel() for p in model.parameters()) < 1_000_000

    ref_model, ref_processor = create_tiny_vlm(family, seed=0)  # the same build, never saved
    ref_processor.tokenizer.padding_side = "left"
    images = frames(2)
    inputs, ref_inputs = batch_inputs(processor, images), batch_inputs(ref_processor, images)
    assert inputs.keys() == ref_inputs.keys()
    for key in inputs:
        torch.testing.assert_close(inputs[key], ref_inputs[key], rtol=0, atol=0)
    with torch.no_grad():
        logits, ref_logits = model(**inputs).logits, ref_model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, len(processor.tokenizer))
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)

    other, _ = create_tiny_vlm(family, seed=1)
    with torch.no_grad():
        assert not torch.allclose(other(**inputs).logits, logits), "the seed must change the weights"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_one_300px_frame_is_a_small_number_of_image_tokens(family, tiny_vlm_path):
    model, processor = load(tiny_vlm_path(family))
    inputs = batch_inputs(processor, frames(1), PROMPTS[:1])
    assert int((inputs["input_ids"] == image_token_id(model)).sum()) == EXPECTED[family][2] <= 100
    # The trainer's one-call path (`apply_chat_template(tokenize=True)` with images in the messages) agrees.
    one_call = processor.apply_chat_template(
        [chat(frames(1)[0], PROMPTS[0])],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    assert torch.equal(one_call["input_ids"], inputs["input_ids"])


# Knob values that change each family's image tokens per 300×300 frame: Qwen's `image_size` is the largest side an
# image is resized to, everyone else's the vision tower's input (tile) side.
KNOBS = {
    "llava": {"image_size": 64, "patch_size": 8},
    "llava_next": {"image_size": 64, "patch_size": 8},
    "qwen2_5_vl": {"image_size": 112, "patch_size": 28},
    "qwen3_vl": {"image_size": 128, "patch_size": 32},
    "gemma3": {"image_size": 48, "patch_size": 4},
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_takes_the_same_vision_and_text_knobs(family):
    """`image_size`, `patch_size`, `vision_config` and `text_config` reach every family's towers and processor."""
    knobs = KNOBS.get(family, {"image_size": 96, "patch_size": 16})
    model, processor = create_tiny_vlm(
        family, **knobs, vision_config={"num_hidden_layers": 1}, text_config={"num_hidden_layers": 1}
    )
    vision = model.config.vision_config
    assert vision.num_hidden_layers == 1 and model.config.get_text_config().num_hidden_layers == 1
    patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
    assert patch == knobs["patch_size"]
    if family.startswith("qwen"):
        assert processor.image_processor.size["longest_edge"] == knobs["image_size"] ** 2
    else:
        side = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        assert side == knobs["image_size"]
    processor.tokenizer.padding_side = "left"
    inputs = batch_inputs(processor, frames(1), PROMPTS[:1])
    tokens = int((inputs["input_ids"] == image_token_id(model)).sum())
    assert 0 < tokens != EXPECTED[family][2], "the knobs should change how many image tokens a frame is"
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()  # towers and processor agree on the new geometry
    stacks = [m for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and n.endswith(("layers",
              "blocks", "layer"))]  # every tower's stack of blocks: one block each
    assert len(stacks) >= 2 and all(len(m) == 1 for m in stacks)


# ------------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_suppressed_ids_cover_image_and_special_tokens_but_not_eos(family, tiny_vlm_path):
    model, processor = load(tiny_vlm_path(family))
    tok = processor.tokenizer
    suppress = set(generation_suppress_token_ids(processor, model.config))
    assert image_token_id(model) in suppress
    assert tok.eos_token_id not in suppress
    assert {tok.bos_token_id, tok.pad_token_id} <= suppress
    assert set(tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>", "<|system|>"])) <= suppress
    if family in ("qwen2_5_vl", "qwen3_vl"):
        c = model.config
        assert {c.video_token_id, c.vision_start_token_id, c.vision_end_token_id} <= suppress
    if family in SPECIAL_TOKENS:  # the tokens each family's processor writes around its image tokens
        assert set(tok.convert_tokens_to_ids(SPECIAL_TOKENS[family])) <= suppress
    if family in ("idefics3", "smolvlm"):  # Idefics3Processor replaces the tokenizer's extra special tokens; these must survive
        names = ["<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_6_col_6>", "<end_of_utterance>"]
        assert set(tok.convert_tokens_to_ids(names)) <= suppress
    assert all(0 <= i < len(tok) for i in suppress)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_left_padded_batch_generates_without_image_tokens(family, tiny_vlm_path):
    model, processor = load(tiny_vlm_path(family))
    inputs = batch_inputs(processor, frames(2))
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[:, -1].all(), "the short prompt must be left-padded"
    suppress = generation_suppress_token_ids(processor, model.config)
    img = image_token_id(model)

    # Make the image token the model's favourite, so the check would fail if suppression did not work.
    hook = model.get_output_embeddings().register_forward_hook(
        lambda m, i, out: out.index_add(-1, torch.tensor([img]), torch.full((*out.shape[:-1], 1), 30.0))
    )
    try:
        torch.manual_seed(0)
        unsuppressed = model.generate(**inputs, do_sample=True, temperature=0.7, max_new_tokens=4)
        assert (unsuppressed[:, inputs["input_ids"].shape[1] :] == img).any(), "the hook should favour <image>"
        torch.manual_seed(0)
        out = model.generate(**inputs, do_sample=True, temperature=0.7, max_new_tokens=16, suppress_tokens=suppress)
    finally:
        hook.remove()
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape[0] == 2 and prompt_len < out.shape[1] <= prompt_len + 16
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"])
    completion = out[:, prompt_len:]
    generated = completion[completion != processor.tokenizer.pad_token_id]  # generate pads rows after EOS
    assert generated.numel() > 0 and not torch.isin(generated, torch.tensor(suppress)).any()


class RecordScores(LogitsProcessor):
    """Appends a copy of the scores it sees to ``store`` and passes them on unchanged."""

    def __init__(self, store):
        self.store = store

    def __call__(self, input_ids, scores):
        self.store.append(scores.clone())
        return scores


@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl"])
def test_model_generation_config_cannot_change_what_the_agent_samples(family, greedy, tiny_vlm_path, monkeypatch):
    """`generate` fills unpassed settings from the model's `generation_config` (Qwen2.5-VL Instruct ships
    `repetition_penalty=1.05`). `generate_completions` must still draw from the plain softmax at the temperature that
    PPO scores (greedy: its argmax), only with suppressed tokens made impossible."""
    model, processor = load(tiny_vlm_path(family))
    config = model.generation_config
    config.do_sample, config.temperature, config.top_k, config.top_p = not greedy, 0.3, 5, 0.5
    config.repetition_penalty, config.no_repeat_ngram_size, config.min_p, config.typical_p = 1.5, 2, 0.2, 0.5
    config.forced_eos_token_id, config.min_new_tokens, config.num_beams = processor.tokenizer.eos_token_id, 3, 2
    raw, processed = [], []
    build = model._get_logits_processor

    def spy(*args, **kwargs):  # records the logits before and after the processors `generate` builds
        return LogitsProcessorList([RecordScores(raw), *build(*args, **kwargs), RecordScores(processed)])

    monkeypatch.setattr(model, "_get_logits_processor", spy)
    suppress = generation_suppress_token_ids(processor, model.config)
    inputs = batch_inputs(processor, frames(2, seed=2))
    torch.manual_seed(0)
    ids, _, _ = generate_completions(
        model, processor, dict(inputs), greedy=greedy, temperature=0.7, top_p=1.0, max_new_tokens=6,
        suppress_token_ids=suppress, pad_token_id=processor.tokenizer.pad_token_id,
    )
    assert ids.shape == (2, len(raw)) and len(raw) == len(processed) >= 1 and raw[0].shape[0] == 2  # no beams
    suppressed = torch.zeros(raw[0].shape[-1], dtype=torch.bool)
    suppressed[suppress] = True
    for before, after in zip(raw, processed):
        expected = (before if greedy else before / 0.7).masked_fill(suppressed, float("-inf"))
        torch.testing.assert_close(after, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prompt_plus_completion_forward_matches_generation_and_trains_both_towers(family, tiny_vlm_path):
    model, processor = load(tiny_vlm_path(family))
    inputs = batch_inputs(processor, frames(2, seed=1))
    suppress = generation_suppress_token_ids(processor, model.config)
    torch.manual_seed(0)
    gen = model.generate(
        **inputs,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=8,
        min_new_tokens=8,
        suppress_tokens=suppress,
        output_logits=True,
        return_dict_in_generate=True,
    )
    prompt_len = inputs["input_ids"].shape[1]
    completion = gen.sequences[:, prompt_len:]  # (2, 8)
    gen_logits = torch.stack(gen.logits, dim=1)  # (2, 8, vocab), raw logits at each sampling step

    # Per-token keys (attention_mask, Qwen's mm_token_type_ids) must cover the completion too; vision inputs stay.
    full = concat_prompt_completion(inputs, completion, torch.ones_like(completion))
    if family in ("qwen2_5_vl", "qwen3_vl"):
        assert "mm_token_type_ids" in inputs and "image_grid_thw" in inputs
        stale = {**full, "mm_token_type_ids": inputs["mm_token_type_ids"]}
        with pytest.raises(IndexError):
            model(**stale)  # not extending mm_token_type_ids over the completion breaks the forward

    model.train()
    logits = model(**full, use_cache=False).logits[:, prompt_len - 1 : -1]  # (2, 8, vocab)
    torch.testing.assert_close(logits.detach(), gen_logits, atol=1e-4, rtol=1e-4)
    logprobs = torch.log_softmax(logits.float(), -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    (-logprobs.mean()).backward()

    def grad_norm(names):
        grads = [
            p.grad.norm() for n, p in model.named_parameters() if any(s in n for s in names) and p.grad is not None
        ]
        return float(torch.stack(grads).sum()) if grads else 0.0

    assert grad_norm(("vision_tower", "visual", "vision_model")) > 0
    assert grad_norm(("language_model", "text_model")) > 0
    assert grad_norm(("multi_modal_projector", "merger", "connector")) > 0
