"""The JUDO processor: a project-trained tokenizer plus Qwen2.5-VL's image processor.

No pretrained tokenizer exists on the machines that train the ``tiny`` preset, so the
project trains its own byte-level BPE with every special token Qwen2.5-VL uses and
Qwen's chat template. The result is saved in the standard Hugging Face layout
(``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``,
``processor_config.json``) so plain transformers, and vLLM on GPU hosts, read the
checkpoint folder unchanged.

:class:`JudoProcessor` is a :class:`Qwen2_5_VLProcessor` without a video processor,
because Qwen's video processor needs torchvision, which the project does not install.
It saves itself under the name ``Qwen2_5_VLProcessor`` so that hosts with torchvision
load the same folder with the stock class.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

#: Qwen2.5-VL's special tokens, in Qwen's id order (they get ids 0..21 in our vocabulary).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

#: The output-contract tags (see ``judo_model.runtime.output``) as single, *non-special* tokens:
#: the tiny model learns the structure from one id per tag, and decoding with
#: ``skip_special_tokens=True`` keeps them.
CONTRACT_TAG_TOKENS: tuple[str, ...] = (
    "<think>",
    "</think>",
    "<defect>",
    "</defect>",
    "<region>",
    "</region>",
    "<answer>",
    "</answer>",
)

#: Qwen2-VL / Qwen2.5-VL chat template (as shipped with Qwen2.5-VL-*-Instruct).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Pixel bounds for the ``tiny`` preset: 112x112 to 224x224 (4x4 to 8x8 merged tokens).
TINY_MIN_PIXELS = 112 * 112
TINY_MAX_PIXELS = 224 * 224

DEFAULT_VOCAB_SIZE = 4096

#: Industrial-inspection phrasing the tokenizer should encode compactly, on top of the
#: MMAD domain knowledge. The data generator adds its own text through ``extra_text``.
INSPECTION_PHRASES: tuple[str, ...] = (
    "Image 1 is a normal reference sample of the same product. Image 2 is the query image to inspect.",
    "Image 3 is an anomaly map from the prefilter; bright areas differ from normal samples.",
    "Compare the query image with the normal reference and answer the questions.",
    "Is there any defect in the object? Options: A: Yes B: No",
    "There is no defect in the object.",
    "What is the type of the defect? Options: A: Scratch B: Crack C: Contamination D: Hole E: Broken",
    "Where is the defect? Options: A: Top left B: Top right C: Center D: Bottom left E: Bottom right",
    "What is the appearance of the defect? Options: A: A thin dark line B: A round bright spot",
    "What effect does this defect have on the product? It may leak, crack further or fail inspection.",
    "What kind of product is in the image? What is the material of the object?",
    "The query surface shows a scratch, crack, dent, hole, stain, contamination, missing part, "
    "misplaced part, bent lead, broken teeth, frayed fabric, poke, cut, fold, glue strip, color stain.",
    "The object matches the reference: shape, color, texture and count are normal.",
    "The defect region is at the top left, top right, center, bottom left, bottom right, edge or border.",
    "yes no normal good anomalous defective defect-free region answer reasoning",
    "bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile toothbrush "
    "transistor wood zipper breakfast_box juice_bottle pushpins screw_bag splicing_connectors "
    "candle capsules cashew chewinggum fryum macaroni pcb pipe_fryum",
    "[[120, 340, 260, 480]] [] [[0, 0, 1000, 1000]] 0 1 2 3 4 5 6 7 8 9 10 100 250 500 750 999 1000",
)


def domain_knowledge_texts(path: str | Path) -> Iterator[str]:
    """Yield every text value of an MMAD ``domain_knowledge.json`` (any nesting depth)."""

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    yield from walk(json.loads(Path(path).read_text(encoding="utf-8")))


def tokenizer_corpus(
    domain_knowledge_path: str | Path | None = None, extra_text: Iterable[str] = ()
) -> Iterator[str]:
    """The text the tokenizer is trained on: built-in phrasing, domain knowledge, extra text."""
    yield from INSPECTION_PHRASES
    if domain_knowledge_path is not None:
        yield from domain_knowledge_texts(domain_knowledge_path)
    yield from extra_text


def train_tokenizer(corpus: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` with Qwen's special tokens and chat template.

    Every byte is in the initial alphabet, so any text (and any model output) round-trips.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_non_empty(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        model_max_length=32768,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(list(CONTRACT_TAG_TOKENS), special_tokens=False)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and text.strip():
            yield text


def build_image_processor(
    min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS
) -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's image processor (PIL backend: no torchvision) with the given pixel bounds.

    Images are resized so both sides are multiples of 28 (patch 14 x merge 2) and the area
    lies in ``[min_pixels, max_pixels]``.
    """
    if min_pixels <= 0 or max_pixels < min_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )


class JudoProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images and text only (no video processor, no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict:
        """Describe the folder as a stock Qwen2.5-VL processor, video settings included.

        The stock class (used by vLLM and ``AutoProcessor`` on hosts with torchvision)
        needs a video processor config; ours mirrors the image settings. This class
        ignores that entry when loading.
        """
        output = super().to_dict()
        output["processor_class"] = Qwen2_5_VLProcessor.__name__
        output["video_processor"] = self._video_processor_config()
        return output

    def _video_processor_config(self) -> dict:
        image_processor = self.image_processor
        return {
            "video_processor_type": "Qwen2VLVideoProcessor",
            "patch_size": image_processor.patch_size,
            "temporal_patch_size": image_processor.temporal_patch_size,
            "merge_size": image_processor.merge_size,
            "size": dict(image_processor.size),
            "image_mean": list(image_processor.image_mean),
            "image_std": list(image_processor.image_std),
        }

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save as usual, then name the stock processor class in ``tokenizer_config.json`` too."""
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        self.tokenizer._set_processor_class(Qwen2_5_VLProcessor.__name__)
        self.tokenizer.save_pretrained(save_directory)
        return files


def build_processor(
    corpus: Iterable[str] | None = None,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
) -> JudoProcessor:
    """A fresh processor: tokenizer trained on ``corpus`` (built-in phrasing when None)."""
    tokenizer = train_tokenizer(tokenizer_corpus() if corpus is None else corpus, vocab_size=vocab_size)
    return JudoProcessor(
        image_processor=build_image_processor(min_pixels, max_pixels),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def load_processor(directory: str | Path, **kwargs) -> JudoProcessor:
    """Load a processor saved by :func:`build_processor` or shipped with a Qwen2.5-VL checkpoint."""
    return JudoProcessor.from_pretrained(str(directory), local_files_only=True, **kwargs)


def stop_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Ids that end an assistant turn: ``<|im_end|>`` and ``<|endoftext|>``."""
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
