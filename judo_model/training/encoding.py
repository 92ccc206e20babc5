"""Fast training encoding: :func:`judo_model.runtime.prompting.encode_for_training`, with image caching.

Training shows the same few hundred images thousands of times; running Qwen's image
processor on each of them every step costs more than the tiny model's forward pass. This
encoder caches each image's ``pixel_values`` / ``image_grid_thw`` (keyed by its pixels)
and expands the ``<|image_pad|>`` placeholders itself, exactly as the processor does.
``tests/test_judo_training.py`` checks it against ``encode_for_training`` token for token.
"""

from __future__ import annotations

import hashlib

import torch
from PIL import Image
from transformers import BatchFeature

from judo_model.runtime.prompting import IGNORE_INDEX, JudoPrompt, prompt_text

IMAGE_TOKEN = "<|image_pad|>"


class CachedEncoder:
    def __init__(self, processor, max_images: int = 20000):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.merge = processor.image_processor.merge_size ** 2
        self._images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.max_images = max_images

    def image(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        key = hashlib.md5(image.tobytes() + repr(image.size).encode()).hexdigest()
        cached = self._images.get(key)
        if cached is None:
            out = self.processor.image_processor(images=[image], return_tensors="pt")
            cached = (out["pixel_values"], out["image_grid_thw"])
            if len(self._images) < self.max_images:
                self._images[key] = cached
        return cached

    def _expand(self, text: str, grids: list[torch.Tensor]) -> str:
        parts = text.split(IMAGE_TOKEN)
        if len(parts) - 1 != len(grids):
            raise ValueError(f"{len(parts) - 1} image placeholders for {len(grids)} images")
        out = [parts[0]]
        for grid, part in zip(grids, parts[1:]):
            out.append(IMAGE_TOKEN * int(grid.prod() // self.merge))
            out.append(part)
        return "".join(out)

    def encode(self, prompt: JudoPrompt, target: str | None = None) -> BatchFeature:
        """Model inputs for ``prompt``; with ``target``, also ``labels`` on the assistant turn only."""
        images = [self.image(image) for image in prompt.images]
        grids = [g for _, g in images]
        prefix = self._expand(prompt_text(self.processor, prompt), [g[0] for g in grids])
        prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        if target is None:
            ids = torch.tensor([prefix_ids])
        else:
            ids = torch.tensor([self.tokenizer(prefix + target + "<|im_end|>", add_special_tokens=False)["input_ids"]])
            if ids[0, : len(prefix_ids)].tolist() != prefix_ids:
                raise ValueError("prompt tokens change when the target is appended; cannot mask the prompt")
        batch = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == self.image_token_id).long(),
        }
        if images:
            batch["pixel_values"] = torch.cat([p for p, _ in images])
            batch["image_grid_thw"] = torch.cat(grids)
        if target is not None:
            labels = ids.clone()
            labels[0, : len(prefix_ids)] = IGNORE_INDEX
            batch["labels"] = labels
        return BatchFeature(batch)
