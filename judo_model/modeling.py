"""Build, load, adapt (LoRA) and save JUDO models, always offline.

A saved checkpoint is a plain Hugging Face folder (``config.json``, ``model.safetensors``,
``generation_config.json`` and the processor files), loadable by
``Qwen2_5_VLForConditionalGeneration.from_pretrained`` / ``AutoModelForImageTextToText``
and by vLLM without any JUDO code.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

from judo_model.presets import LANGUAGE_MODEL_LORA_TARGETS, ModelPreset, get_preset, tiny_config
from judo_model.processing import (
    JudoProcessor,
    build_image_processor,
    build_processor,
    load_processor,
    stop_token_ids,
)

JudoVLModel = Qwen2_5_VLForConditionalGeneration | PeftModel


def build_tiny_model(processor: JudoProcessor, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised ``tiny`` model sized to ``processor``'s vocabulary."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(processor.tokenizer))
    model.generation_config = judo_generation_config(processor)
    return model.eval()


def judo_generation_config(processor: JudoProcessor) -> GenerationConfig:
    """Greedy decoding that stops at the end of the assistant turn (JUDO's, whatever a base model's was)."""
    tokenizer = processor.tokenizer
    return GenerationConfig(
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        do_sample=False,
    )


def load_model(
    preset: str,
    path: str | Path | None = None,
    *,
    lora: bool = False,
    corpus: Iterable[str] | None = None,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
) -> tuple[JudoVLModel, JudoProcessor]:
    """Model and processor for ``preset``; ``lora=True`` wraps the language model in LoRA.

    ``tiny`` without ``path`` is built from scratch, its tokenizer trained on ``corpus``
    (built-in inspection phrasing when None). With ``path`` (required for the 3B/7B
    presets: a local copy of Qwen2.5-VL-*-Instruct or a JUDO checkpoint) weights are read
    from disk only; nothing is downloaded.
    """
    spec = get_preset(preset)
    if path is None:
        if not spec.from_scratch:
            raise ValueError(f"preset {preset!r} needs path= pointing at a local Qwen2.5-VL checkpoint folder")
        processor = build_processor(corpus, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
        model = build_tiny_model(processor, seed=seed)
        if dtype is not None:
            model = model.to(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    else:
        model, processor = load_checkpoint(path, dtype=dtype or ("float32" if spec.from_scratch else "auto"))
        if not spec.from_scratch:
            processor.image_processor = build_image_processor(spec.min_pixels, spec.max_pixels)
    if lora:
        model = apply_lora(model, spec)
    return model, processor


def apply_lora(model: Qwen2_5_VLForConditionalGeneration, preset: ModelPreset) -> PeftModel:
    """Wrap ``model`` with LoRA on every language-model projection; the ViT stays frozen."""
    config = LoraConfig(
        r=preset.lora_rank,
        lora_alpha=preset.lora_alpha,
        lora_dropout=preset.lora_dropout,
        target_modules=LANGUAGE_MODEL_LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    adapted = get_peft_model(model, config)
    return adapted.train(model.training)  # new LoRA dropout layers start in training mode


def load_checkpoint(
    directory: str | Path, dtype: torch.dtype | str = "float32"
) -> tuple[Qwen2_5_VLForConditionalGeneration, JudoProcessor]:
    """Read a checkpoint folder (ours or Qwen's) from local files only."""
    directory = str(directory)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory, dtype=dtype, local_files_only=True)
    return model.eval(), load_processor(directory)


def save_checkpoint(model: JudoVLModel, processor: JudoProcessor, directory: str | Path) -> Path:
    """Save model and processor as one standard folder; returns the folder.

    A LoRA model is merged into its base weights first (``merge_and_unload``), because the
    folder must load without peft. Merging consumes the adapter, so call this at the end
    of training; for intermediate adapter-only checkpoints use ``model.save_pretrained``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
