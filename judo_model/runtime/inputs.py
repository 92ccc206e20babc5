"""What a checkpoint is shown: its prompt options (read from its ``judo_training.json``) and image size.

Training writes the options into the checkpoint folder; inference reads them back with
:func:`prompt_options_of`, so a checkpoint is always shown the inputs it was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from judo_model.runtime.evidence import DEFAULT_ROUTE

#: Side the reference and query are shown at (4x4 merged visual tokens each).
IMAGE_SIDE = 112
#: The training log ``judo train`` writes beside the weights (recipe, prompt options, curves).
TRAINING_FILE = "judo_training.json"


def shown(image: np.ndarray) -> Image.Image:
    """An image as the model sees it: RGB at :data:`IMAGE_SIDE` px."""
    return Image.fromarray(image).resize((IMAGE_SIDE, IMAGE_SIDE), Image.BICUBIC)


@dataclass
class PromptOptions:
    """Which juxtaposed inputs a stage shows (the ablation switches these)."""

    reference: bool = True
    evidence_route: str | None = DEFAULT_ROUTE
    domain_knowledge_prob: float = 0.0
    knowledge: dict = field(default_factory=dict)
    #: the evidence note also names the known product the image looks most like
    product_note: bool = False

    def describe(self) -> dict:
        return {"reference": self.reference, "evidence_route": self.evidence_route,
                "domain_knowledge_prob": self.domain_knowledge_prob, "product_note": self.product_note}


def read_training_log(checkpoint: str | Path) -> dict:
    """The checkpoint's training log ({} for a checkpoint not written by ``judo train``)."""
    path = Path(checkpoint) / TRAINING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def prompt_options_of(checkpoint: str | Path) -> PromptOptions:
    """How a checkpoint was prompted in training (what inference must show it)."""
    recipe = read_training_log(checkpoint).get("recipe", {})
    return PromptOptions(reference=recipe.get("reference", True), evidence_route=recipe.get("evidence_route"),
                         product_note=recipe.get("product_note", False))
