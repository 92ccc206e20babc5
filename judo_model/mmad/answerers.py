"""Who answers MMAD questions: the protocol and the random baseline.

A model plugs in by implementing :class:`Answerer`. ``answer`` returns free text
(the scorer extracts the letter as MMAD does) or a :class:`GroundedAnswer` that
also carries where the model thinks the defect is; the evaluator turns those
regions into grounding metrics (IoU, pixel AUROC) wherever a ground-truth mask exists.
JUDO checkpoints and the ``--model`` loader are in :mod:`judo_model.mmad.judo_answerer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Union, runtime_checkable

import numpy as np

RANDOM_BASELINE = "baseline:random"
#: How a JUDO answerer turns its output into an option: the generated text matched to an option,
#: the answer decoded as one of the options' texts, or the option the model finds most likely.
ANSWER_MODES = ("generate", "guided", "likelihood")
#: Who generates a JUDO answerer's text: transformers' ``generate`` or vLLM (docs/vllm.md).
ANSWER_ENGINES = ("transformers", "vllm")

#: MMAD's instruction to the model (its GPT-4o query script), reused so prompts stay comparable.
MMAD_INSTRUCTION = (
    "You are an industrial inspector who checks products by images. You should judge whether there is a "
    "defect in the query image and answer the questions about it.\n"
    "Answer with the option's letter from the given choices directly!"
)


@dataclass(frozen=True)
class MMADQuery:
    """One question about one image, with everything the MMAD protocol lets a model see."""

    image_key: str
    image_path: Path
    question: str
    options: dict[str, str]
    question_type: str
    reference_paths: list[Path] = field(default_factory=list)
    domain_knowledge: str | None = None
    mask_path: Path | None = None

    def prompt(self) -> str:
        """MMAD-style text prompt: instruction, template note, knowledge, question and options."""
        parts = [MMAD_INSTRUCTION]
        if self.reference_paths:
            parts.append(f"The first {len(self.reference_paths)} image is the normal sample, which can be used "
                         "as a template to compare.")
        if self.domain_knowledge:
            parts.append(f"Following is the domain knowledge which contains some types of defects and "
                         f"normal characteristics:\n{self.domain_knowledge}")
        options = "".join(f"{letter}. {text}\n" for letter, text in self.options.items())
        parts.append(f"The last image is the query image. Following is the question:\nQuestion: {self.question} \n"
                     f"{options}")
        return "\n".join(parts)


@dataclass(frozen=True)
class GroundedAnswer:
    """A reply plus the predicted defect region, for grounding metrics.

    ``boxes`` are ``(x1, y1, x2, y2)`` normalised to 0..1; ``mask`` is a boolean map and
    ``anomaly_map`` a float score map (any size; resized to the ground truth). Give what
    the model has; the binary region used for IoU is ``mask`` or else the boxes, and the
    pixel AUROC uses ``anomaly_map`` or else that binary region.
    """

    text: str
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    mask: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None

    @property
    def has_region(self) -> bool:
        return bool(self.boxes) or self.mask is not None or self.anomaly_map is not None


Reply = Union[str, GroundedAnswer]


@runtime_checkable
class Answerer(Protocol):
    """Anything that answers an :class:`MMADQuery` with text or a :class:`GroundedAnswer`."""

    name: str

    def answer(self, query: MMADQuery) -> Reply: ...


class RandomAnswerer:
    """Picks one of the offered letters uniformly at random: the chance-level baseline."""

    def __init__(self, seed: int = 0):
        self.name = "random"
        self._rng = np.random.default_rng(seed)

    def answer(self, query: MMADQuery) -> str:
        letters = sorted(query.options)
        return letters[int(self._rng.integers(len(letters)))]


class AnswererNotAvailable(RuntimeError):
    """The requested answerer cannot be built here; the message says what is missing."""
