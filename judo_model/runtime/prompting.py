"""Juxtaposed prompts: normal reference beside the query (and the prefilter's anomaly map).

JUDO's Stage 1 teaches the model to find a defect by comparing the query with a normal
image of the same product, so every prompt shows the images in one fixed order and says
which is which: (1) the normal reference, (2) the query, (3) optionally the anomaly map.
The same builder serves training (:func:`encode_for_training`) and inference
(:func:`encode_for_generation`), so the model sees identical prompts in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from judo_model.imaging import load_image
from judo_model.runtime.questions import Question
from judo_model.runtime.output import CONTRACT_INSTRUCTIONS

#: Label of each image role, in the order the images appear in every prompt.
IMAGE_ROLES = {
    "reference": "a normal reference of the same product",
    "query": "the query to inspect",
    "evidence": "the prefilter's evidence (bright where unlike normal samples)",
}

#: Label id ignored by the loss (prompt tokens).
IGNORE_INDEX = -100

ImageLike = np.ndarray | Image.Image | str | Path


@dataclass(frozen=True)
class JudoPrompt:
    """Chat messages for ``processor.apply_chat_template`` and the images, in placeholder order."""

    messages: list[dict]
    images: list[Image.Image]
    image_roles: tuple[str, ...]


def as_pil_image(image: ImageLike) -> Image.Image:
    """RGB PIL image from an array, a PIL image or a path (decoded by ``judo_model.imaging``)."""
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), mode="RGB")


def build_prompt(
    reference_image: ImageLike | None,
    query_image: ImageLike,
    *,
    evidence_image: ImageLike | None = None,
    evidence_note: str | None = None,
    questions: Sequence[Question] | None = None,
    domain_knowledge: str | None = None,
) -> JudoPrompt:
    """One user message juxtaposing the images (reference, query, evidence) and the task.

    Without a reference (0-shot) the query is image 1; the text always names the images
    that are actually shown, by number. ``evidence_note`` is the prefilter's evidence in
    words (score and hottest region), for checkpoints trained with it.
    """
    named_images = [
        (role, image)
        for role, image in (("reference", reference_image), ("query", query_image), ("evidence", evidence_image))
        if image is not None
    ]
    content = image_introductions([role for role, _ in named_images])
    content.append({"type": "text", "text": task_text([role for role, _ in named_images], evidence_note=evidence_note,
                                                      questions=questions, domain_knowledge=domain_knowledge)})
    return JudoPrompt(
        messages=[{"role": "user", "content": content}],
        images=[as_pil_image(image) for _, image in named_images],
        image_roles=tuple(role for role, _ in named_images),
    )


def image_introductions(roles: Sequence[str], with_images: bool = True) -> list[dict]:
    """Message parts naming each image by number; ``with_images=False`` keeps the words only."""
    content: list[dict] = []
    for number, role in enumerate(roles, start=1):
        content.append({"type": "text", "text": f"Image {number} is {IMAGE_ROLES[role]}:\n"})
        if with_images:
            content.append({"type": "image"})
        content.append({"type": "text", "text": "\n"})
    return content


def task_text(roles: Sequence[str], *, evidence_note: str | None = None, questions: Sequence[Question] | None = None,
              domain_knowledge: str | None = None) -> str:
    """The text after the images: the task, the evidence note, knowledge, questions, the contract."""
    query_number = list(roles).index("query") + 1
    task = (
        f"Inspect image {query_number} for defects"
        + (" by comparing it with the normal reference (image 1)." if "reference" in roles else ".")
    )
    parts = [task]
    if evidence_note and evidence_note.strip():
        parts.append(evidence_note.strip())
    if domain_knowledge and domain_knowledge.strip():
        parts.append("Domain knowledge about this product:\n" + domain_knowledge.strip())
    if questions:
        parts.append("\n".join(q.render(i) for i, q in enumerate(questions, start=1)))
    parts.append(CONTRACT_INSTRUCTIONS)
    return "\n\n".join(parts)


def prompt_text(processor: ProcessorMixin, prompt: JudoPrompt) -> str:
    """The chat-formatted prompt, ending with the assistant turn's opening."""
    return processor.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)


def encode_for_generation(processor: ProcessorMixin, prompt: JudoPrompt) -> BatchFeature:
    """Model inputs (ids, pixel_values, image_grid_thw, ...) for one prompt."""
    return processor(text=[prompt_text(processor, prompt)], images=prompt.images, return_tensors="pt")


def encode_for_training(processor: ProcessorMixin, prompt: JudoPrompt, target: str) -> BatchFeature:
    """Inputs plus ``labels`` that train only on the assistant turn (``target`` + ``<|im_end|>``)."""
    prefix = prompt_text(processor, prompt)
    full = prefix + target + "<|im_end|>"
    encoded = processor(text=[full], images=prompt.images, return_tensors="pt")
    prefix_ids = processor(text=[prefix], images=prompt.images, return_tensors="pt")["input_ids"][0]
    input_ids = encoded["input_ids"][0]
    if not torch.equal(input_ids[: len(prefix_ids)], prefix_ids):
        raise ValueError("prompt tokens change when the target is appended; cannot mask the prompt")
    labels = input_ids.clone()
    labels[: len(prefix_ids)] = IGNORE_INDEX
    encoded["labels"] = labels.unsqueeze(0)
    return encoded


def collate_for_training(examples: Sequence[BatchFeature], pad_token_id: int) -> BatchFeature:
    """Right-pad encoded examples into one batch; image patches (if any) are concatenated in order."""
    longest = max(example["input_ids"].shape[1] for example in examples)

    def padded(key: str, fill: int) -> torch.Tensor:
        rows = []
        for example in examples:
            row = example[key][0]
            rows.append(torch.cat([row, row.new_full((longest - row.shape[0],), fill)]))
        return torch.stack(rows)

    batch = {
        "input_ids": padded("input_ids", pad_token_id),
        "attention_mask": padded("attention_mask", 0),
        "labels": padded("labels", IGNORE_INDEX),
    }
    with_images = [example for example in examples if "pixel_values" in example]
    if with_images:
        batch["pixel_values"] = torch.cat([example["pixel_values"] for example in with_images])
        batch["image_grid_thw"] = torch.cat([example["image_grid_thw"] for example in with_images])
    if all("mm_token_type_ids" in example for example in examples):
        batch["mm_token_type_ids"] = padded("mm_token_type_ids", 0)
    return BatchFeature(batch)
