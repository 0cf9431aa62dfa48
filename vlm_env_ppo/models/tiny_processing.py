"""Tokenizer and processor parts of the tiny offline VLMs (`vlm_env_ppo.models.tiny`): the families' image
placeholders and special tokens, a chat template, a byte-level BPE tokenizer trained offline (`train_tiny_tokenizer`),
and video processors that work without torchvision.

Working without torchvision (the test machines and many CPU-only installs have none that imports next to their
torch):

- Image processors: transformers 5 has two backends per image processor, torchvision (the plain class name, e.g.
  ``Qwen2VLImageProcessor``) and PIL/numpy (``...ImageProcessorPil``). We build the ``...Pil`` class; the saved
  ``image_processor_type`` is the plain name, which ``AutoImageProcessor`` maps to the PIL backend when torchvision
  is missing (and to the torchvision one when it is installed).
- Video processors have no PIL backend, and in transformers 5.24 a processor that owns a ``video_processor``
  (Qwen2.5-VL, Qwen3-VL, SmolVLM, InternVL) can be neither built nor loaded without torchvision, even for images
  only. Tiny checkpoints of those families store a bare ``VideoProcessorMixin`` as video processor, and
  `allow_video_processors_without_torchvision` (run on ``import vlm_env_ppo.models``) makes transformers accept
  it. So such a tiny checkpoint loads with ``AutoProcessor`` in any process that imported ``vlm_env_ppo.models``
  (the trainer does); without that import and without torchvision, ``AutoProcessor`` raises "requires
  torchvision". Real checkpoints of these families store real video processors: they need torchvision.
- Pixtral / Mistral 3 is not built here: ``PixtralProcessor`` itself requires torchvision.
- SmolVLM's processor needs the ``num2words`` package.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

TINY_FAMILIES = ("llava", "llava_next", "qwen2_5_vl", "idefics3", "qwen3_vl", "gemma3", "smolvlm", "internvl")
# A tiny text-only Llama (``AutoModelForCausalLM`` + tokenizer), for text envs with `allow_text_only_model`.
TEXT_FAMILY = "text"

# Shared by all families: chat markers and the usual special tokens. Family image tokens are added per family.
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
CHAT_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>")

# The image placeholder each family's processor expands into image tokens, and the special tokens it needs.
_IMAGE_PLACEHOLDER = {
    "llava": "<image>",
    "llava_next": "<image>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "gemma3": "<start_of_image>",  # Gemma3Processor expands it to "\n\n<start_of_image><image_soft_token>×N<end_of_image>\n\n"
    "smolvlm": "<image>",
    "internvl": "<IMG_CONTEXT>",  # InternVLProcessor expands it to "<img><IMG_CONTEXT>×(tokens per tile × tiles)</img>"
    TEXT_FAMILY: "",
}
_IDEFICS_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + tuple(
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
)
_FAMILY_SPECIAL_TOKENS = {
    TEXT_FAMILY: (),
    "llava": ("<image>",),
    "llava_next": ("<image>",),
    "qwen2_5_vl": ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    # Idefics3Processor adds "<fake_token_around_image>", "<image>" and "<end_of_utterance>" itself, but reads the
    # ids of "<global-img>" and "<row_i_col_j>" (i, j in 1..6) from the vocabulary: they must exist as tokens.
    "idefics3": _IDEFICS_TOKENS,
    "smolvlm": (*_IDEFICS_TOKENS, "<video>"),
    "qwen3_vl": ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    "gemma3": ("<start_of_image>", "<end_of_image>", "<image_soft_token>"),
    "internvl": ("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
}
# Named special tokens some processors read as tokenizer attributes (``tokenizer.boi_token``, ``.boi_token_id``);
# passed to the tokenizer as ``<name>=<token>`` so they are saved in ``tokenizer_config.json`` and load back.
_NAMED_TOKENS = {
    "gemma3": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    "internvl": {
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    },
}


# ------------------------------------------------------------------------------------------------------- tokenizer
def _chat_template(image_placeholder: str) -> str:
    """A Jinja chat template: ``<s><|user|>\\n{content}</s>\\n<|assistant|>\\n{answer}</s>\\n``.

    Content may be a string or a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts (the
    format of `Task.build_messages` and TRL). The assistant turn is wrapped in ``{% generation %}`` so TRL's
    ``assistant_only_loss`` works, and ends with EOS so a model trained on it learns to stop.
    """
    content = (
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_placeholder + ""
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
    )
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}" + content + "{{ eos_token }}{% endgeneration %}"
        "{% else %}" + content + "{{ eos_token }}{% endif %}"
        "{{ '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )


def default_corpus() -> list[str]:
    """The built-in training text of the tiny tokenizer: answers, prompts and words of the built-in tasks."""
    texts = []
    ops = ["+", "-", "*", "/", "(", ")", "="]
    actions = [str(i) for i in range(1, 11)] + ops + ["stand", "hit", "red", "blue", "left", "right"]
    for a in actions:
        texts.append(json.dumps({"thoughts": "I look at the image and think step by step.", "action": a}))
        texts.append(json.dumps({"action": a}))
    for t in range(25):
        for c in (0, 3, 7, 12, 24):
            texts.append(
                json.dumps({"thoughts": f"The current number is {c} and the target number is {t}.", "action": "+"})
            )
    texts += [" ".join(str(i) for i in range(25)), " ".join(ops), "0 1 2 3 4 5 6 7 8 9 10 11 12 21 24"]
    cards = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K", "ace", "jack", "queen", "king"]
    texts.append("The cards are " + ", ".join(cards) + ". 'J', 'Q' and 'K' count as 10.")
    texts += [
        "You are playing a game called number line. You will see a target number and a current number in the image.",
        "Your goal is to move the current number to the target number, one step at a time.",
        "You are an expert card game player. You see two playing cards in the image.",
        "Your goal is to type a formula that evaluates to 12 or 24, using the number of each card exactly once.",
        "Each number or operator you choose is appended to the current formula, and '=' submits it.",
        "The current formula is: 3+9. The current formula is empty.",
        "You are a blackjack player. The image shows the dealer's face-up card and your cards.",
        'Choose "hit" to take another card or "stand" to keep your total and end your turn.',
        (
            "Choose exactly one action from the list. Your response should be a valid JSON object in the following "
            "format, with your reasoning first and the action last:"
        ),
        "describe what you see in the image, then think step by step about which action to take",
        "The image is filled with a single colour. Say which colour it is. Target: Current: Formula:",
    ]
    from ..tasks import TASKS  # the real prompts of the registered tasks, so they tokenize compactly

    # Only the tasks the vocabulary was settled with: a later task's prompts (the multi-step probes, Sokoban,
    # FrozenLake) would add merges and renumber tokens, changing every tiny checkpoint, every seed-sensitive learning
    # test and every number measured with one (README, benchmarks).
    for env_id in VOCABULARY_TASKS:
        texts += [TASKS[env_id].prompt({}), TASKS[env_id].prompt({}, action_only=True)]
    return texts


# The registered tasks whose prompts train the tiny tokenizer, in registry order (`default_corpus`).
VOCABULARY_TASKS = (
    "gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0", "gym_cards/Points24-v0", "gym_cards/Blackjack-v0",
    "vlm_env_ppo/ColorChoice-v0", "FrozenLake-v1", "vlm_env_ppo/TextWorld-v0", "vlm_env_ppo/ALFWorld-v0",
    "MiniGrid-Empty-5x5-v0", "MiniGrid-Empty-Random-5x5-v0", "MiniGrid-Empty-6x6-v0", "MiniGrid-Empty-Random-6x6-v0",
    "MiniGrid-Empty-8x8-v0", "MiniGrid-Empty-16x16-v0", "MiniGrid-FourRooms-v0",
)


def train_tiny_tokenizer(
    vocab_size: int = 1024,
    extra_texts: Iterable[str] = (),
    special_tokens: Sequence[str] = (),
    image_placeholder: str = "<image>",
    named_tokens: dict[str, str] | None = None,
):
    """Train a small byte-level BPE tokenizer offline and wrap it as a `PreTrainedTokenizerFast`.

    Args:
        vocab_size: target vocabulary size (the BPE stops earlier if the corpus runs out of merges).
        extra_texts: more training text, appended to `default_corpus`.
        special_tokens: extra special tokens (e.g. a family's image tokens), added after training so they are
            never split.
        image_placeholder: what the chat template writes for an ``{"type": "image"}`` part.
        named_tokens: model-specific named special tokens (``{"boi_token": "<start_of_image>"}``): the tokenizer then
            has ``boi_token`` / ``boi_token_id`` attributes, as Gemma 3's and InternVL's processors expect.

    Returns a tokenizer with ``<s>`` / ``</s>`` / ``<pad>`` / ``<unk>``, chat markers and a chat template. It adds no
    BOS itself (the chat template writes it), so ``processor(text=chat_text)`` gives exactly one BOS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base_specials = [BOS, EOS, PAD, UNK, *CHAT_TOKENS]
    tok = Tokenizer(models.BPE(unk_token=None))  # byte-level: every string is representable, no UNK needed
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=base_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*default_corpus(), *extra_texts], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        **(named_tokens or {}),
    )
    extra = [t for t in [*CHAT_TOKENS, *special_tokens] if t not in (BOS, EOS, PAD, UNK)]
    tokenizer.add_special_tokens({"additional_special_tokens": list(dict.fromkeys(extra))})
    tokenizer.chat_template = _chat_template(image_placeholder)
    return tokenizer


# ------------------------------------------------------------------------------------------- torchvision-free video
def allow_video_processors_without_torchvision() -> None:
    """Let processors that own a ``video_processor`` (Qwen2-VL / 2.5-VL / 3-VL, SmolVLM ...) work without torchvision.

    transformers 5.23 checks each sub-processor's class in ``ProcessorMixin.check_argument_for_proper_class`` by
    looking ``VideoProcessorMixin`` up on the ``transformers`` module, which exports it only when torchvision is
    installed; the fallback lookup then crashes on the torchvision dummy of ``VIDEO_PROCESSOR_MAPPING``. So such a
    processor can be neither built nor loaded, even with no video in sight. ``VideoProcessorMixin`` itself needs no
    torchvision, so we export it (on the module object ``processing_utils`` resolves names on, too). Tiny checkpoints
    then store a bare ``VideoProcessorMixin`` as their video processor (``"video_processor_type":
    "VideoProcessorMixin"``), which ``AutoVideoProcessor`` resolves to that same class: images work, videos would
    raise. A no-op when torchvision is installed; idempotent. `vlm_env_ppo.models` calls it on import.
    """
    import transformers
    from transformers import processing_utils
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return
    from transformers.video_processing_utils import VideoProcessorMixin

    for module in {id(m): m for m in (transformers, processing_utils.transformers_module)}.values():
        if not hasattr(module, "VideoProcessorMixin"):
            module.VideoProcessorMixin = VideoProcessorMixin


def _stub_video_processor(**attributes):
    """A bare ``VideoProcessorMixin``: loads with or without torchvision, so the checkpoint is the same either way.

    Enough for image-only use; passing ``videos=`` to the processor raises. ``attributes`` are stored on it and saved
    with it: SmolVLM's ``apply_chat_template`` reads ``video_processor.num_frames`` and ``.fps`` on every call, videos
    or not. See `allow_video_processors_without_torchvision`.
    """
    allow_video_processors_without_torchvision()
    from transformers.video_processing_utils import VideoProcessorMixin

    return VideoProcessorMixin(**attributes)



# ------------------------------------------------------------------------------------------------------- per family
def _tokenizer_for(family: str, vocab_size: int, extra_texts: Iterable[str]):
    return train_tiny_tokenizer(
        vocab_size=vocab_size,
        extra_texts=extra_texts,
        special_tokens=_FAMILY_SPECIAL_TOKENS[family],
        image_placeholder=_IMAGE_PLACEHOLDER[family],
        named_tokens=_NAMED_TOKENS.get(family),
    )

