"""Training examples for the three JUDO stages, built from an MMAD-format synthetic folder.

One :class:`Example` is one query image with its MMAD questions (none in Stage 1). Every target is
written by :func:`judo_model.runtime.output.format_target`: a short comparison, the verdict with
the defect type, the defect boxes from the ground-truth mask (``[]`` for normal images)
and the answer as option *content*, never a letter.

Sampling is balanced: an image is drawn normal or defective with equal probability
first, then one of its questions, so the verdict the model learns is 50/50.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from judo_model.data.knowledge import defect_title
from judo_model.data.questions import REGIONS, region_of
from judo_model.imaging import load_image, load_mask
from judo_model.mmad.format import DEFECT_QUESTION_TYPES, MMADDataset, MMADItem
from judo_model.runtime.evidence import (HINT_FORMAT, MAX_SCORE_RATIO, NOTE_FORMAT, EvidenceInputs, hottest_boxes,
                                         route_shows_note)
from judo_model.runtime.inputs import PromptOptions, shown
from judo_model.runtime.output import CONTRACT_INSTRUCTIONS, format_target, largest_boxes
from judo_model.runtime.prompting import IMAGE_ROLES, JudoPrompt, Question, build_prompt
from judo_model.training.evidence import EvidenceCache

MAX_BOXES = 3
MIN_BLOB_FRACTION = 0.002
#: Box IoU from which a target box keeps the evidence note's box verbatim.
ENDORSE_IOU = 0.5


@dataclass(frozen=True)
class Example:
    """One query image and its questions (none for Stage 1), with what targets and rewards need."""

    root: Path
    key: str
    category: str
    defect: str | None
    mask_key: str | None
    references: tuple[str, ...]
    questions: tuple[Question, ...] = ()
    answer_letters: tuple[str, ...] = ()
    question_types: tuple[str, ...] = ()

    @property
    def is_normal(self) -> bool:
        return self.defect is None

    @property
    def answer_texts(self) -> list[str]:
        return [q.options[letter] for q, letter in zip(self.questions, self.answer_letters)]

    def subset(self, indices) -> "Example":
        """The same image asking only the questions at ``indices`` (in that order)."""
        return replace(self, questions=tuple(self.questions[i] for i in indices),
                       answer_letters=tuple(self.answer_letters[i] for i in indices),
                       question_types=tuple(self.question_types[i] for i in indices))

    def without_questions(self) -> "Example":
        return self.subset(())


def defect_of(item: MMADItem) -> str | None:
    """The defect folder name of an image key (``.../<split>/<defect>/<file>``), None if normal."""
    return None if item.is_normal else item.key.split("/")[-2]


def load_examples(root: str | Path, questions_file: str) -> list[Example]:
    """One example per image of a question file, carrying all of the image's questions."""
    dataset = MMADDataset(root, questions_file)
    examples = []
    for item in dataset:
        mask = item.mask_path
        conversation = item.record.conversation
        examples.append(Example(
            Path(root), item.key, item.category, defect_of(item),
            str(mask.relative_to(item.root)) if mask is not None else None,
            tuple(str(Path(t).relative_to(item.root)) for t in item.template_paths(8)),
            tuple(Question(q.Question, dict(q.Options)) for q in conversation),
            tuple(q.Answer for q in conversation), tuple(q.type for q in conversation)))
    return examples


def target_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The largest blobs of ``mask`` as snapped 0-1000 boxes (at least one for a non-empty mask)."""
    return largest_boxes(mask, MAX_BOXES, MIN_BLOB_FRACTION)


@lru_cache(maxsize=8192)
def _pixels(path: str) -> np.ndarray:
    return load_image(path)


@lru_cache(maxsize=4096)
def _mask(path: str) -> np.ndarray:
    return load_mask(path)


def ground_truth_mask(example: Example) -> np.ndarray:
    if example.mask_key:
        return _mask(str(example.root / example.mask_key))
    query = _pixels(str(example.root / example.key))
    return np.zeros(query.shape[:2], bool)


def box_iou(a, b) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def endorsed_boxes(truth: list, hint, min_iou: float = ENDORSE_IOU) -> list:
    """The ground-truth boxes, with the one the evidence's box matches (box IoU >= ``min_iou``)
    replaced by the evidence's box, first.

    The model then learns to confirm a right prefilter region verbatim (an exact copy, which a
    small model learns quickly) and to write the true region where the prefilter is off.
    """
    if hint is None or not truth:
        return truth
    best = max(range(len(truth)), key=lambda i: box_iou(hint, truth[i]))
    if box_iou(hint, truth[best]) < min_iou:
        return truth
    return [tuple(hint), *(box for i, box in enumerate(truth) if i != best)]


def reasoning_for(defect_mask: np.ndarray | None) -> str:
    """The target's <think> sentence: where the query differs (None: a normal query)."""
    if defect_mask is None:
        return "The query matches the normal reference."
    return f"The query differs from the reference at the {REGIONS[region_of(defect_mask)].lower()}."


def target_for(example: Example, include_answer: bool = True, hint=None, named_type: str | None = None,
               answered_type: str | None = None) -> str:
    """The contract text the model is trained to write for ``example``.

    ``hint`` is the evidence note's box, if the prompt shows one (see :func:`endorsed_boxes`);
    ``named_type`` replaces the true defect type in the verdict, ``answered_type`` in the
    Defect Classification answer where it is one of the options (the other answers keep the truth).
    """
    answers = answers_naming(example, answered_type) if include_answer else []
    if example.is_normal:
        return format_target(reasoning=reasoning_for(None), defect=False, answers=answers)
    mask = ground_truth_mask(example)
    title = named_type or defect_title(example.category, example.defect)
    return format_target(
        reasoning=reasoning_for(mask),
        defect=True, defect_type=title, boxes=endorsed_boxes(target_boxes(mask), hint), answers=answers)


def answers_naming(example: Example, defect_type: str | None) -> list[str]:
    """The example's answer texts, the Defect Classification answer naming ``defect_type`` if it is an option."""
    return [defect_type if defect_type and kind == "Defect Classification" and defect_type in question.options.values()
            else answer
            for question, kind, answer in zip(example.questions, example.question_types, example.answer_texts)]


def defect_titles(examples: list[Example]) -> list[str]:
    """The defect titles (as answers name them) of the training examples."""
    return sorted({defect_title(e.category, e.defect) for e in examples if e.defect})


def shows_note(options: PromptOptions, evidence: EvidenceCache | None) -> bool:
    return evidence is not None and route_shows_note(options.evidence_route)


def evidence_hint(example: Example, options: PromptOptions, evidence: EvidenceCache | None):
    """The box the prompt's evidence note names for ``example`` (None if the prompt has no note)."""
    if not shows_note(options, evidence):
        return None
    return hottest_boxes(evidence.anomaly_map(example.key), evidence.threshold(example.key))[0]


def note_type(example: Example, options: PromptOptions, evidence: EvidenceCache | None) -> str | None:
    """The defect type the prompt's evidence note names for ``example`` (None: no note or no hint)."""
    return evidence.hints.get(example.key) if shows_note(options, evidence) else None


def knowledge_text(root: str | Path, category: str) -> str | None:
    path = Path(root) / "domain_knowledge.json"
    if not path.is_file():
        return None
    entry = next(iter(json.loads(path.read_text()).values()), {}).get(category)
    return "\n".join(entry.values()) if entry else None


def example_prompt(example: Example, options: PromptOptions, evidence: EvidenceCache | None,
                   rng: random.Random | None = None, use_knowledge: bool | None = None) -> JudoPrompt:
    """The juxtaposed prompt of ``example`` (reference: a random template when ``rng`` is given)."""
    query = _pixels(str(example.root / example.key))
    reference = None
    if options.reference and example.references:
        ref_key = rng.choice(example.references) if rng else example.references[0]
        reference = shown(_pixels(str(example.root / ref_key)))
    evidence_shown = EvidenceInputs()
    if options.evidence_route:
        if evidence is None:
            raise ValueError("this stage needs cached evidence maps (run prepare_evidence first)")
        evidence_shown = evidence.inputs(example.key, query, options.evidence_route, options.product_note)
    if use_knowledge is None:
        use_knowledge = rng is not None and rng.random() < options.domain_knowledge_prob
    knowledge = knowledge_text(example.root, example.category) if use_knowledge else None
    return build_prompt(reference, shown(query), evidence_image=evidence_shown.image,
                        evidence_note=evidence_shown.note,
                        questions=list(example.questions) or None, domain_knowledge=knowledge)


class BalancedSampler:
    """Balanced draws, so that nothing but the images decides the verdict.

    MMAD's defect questions say "There is a defect in the object." A model trained on
    prompts that mix them freely learns the shortcut "no such sentence -> normal" and
    answers every Anomaly Detection question with no. So every draw is one of three kinds
    with probability 1/3 each: a normal image with its (verdict-neutral) questions, a
    defective image with its verdict-neutral questions (Anomaly Detection, object
    questions), or a defective image with its defect questions. Prompts without the cue
    are then exactly 50/50 normal / defective. Within the kind, one random question is
    asked with probability ``single_question`` (as the MMAD harness asks them), otherwise
    all of them are packed in MMAD order, which trains on every answer in one pass. With
    probability ``replay`` the draw is instead a Stage 1 example (a normal or defective image,
    50/50, asked nothing), so that the QA stage does not overwrite the verdict and region
    Stage 1 learned.
    """

    def __init__(self, examples: list[Example], seed: int = 0, single_question: float = 0.4,
                 questions: bool = True, replay: float = 0.0):
        self.rng = random.Random(seed)
        self.single_question = single_question
        self.questions = questions
        self.replay = replay
        self.normal = [e for e in examples if e.is_normal]
        self.defective = [e for e in examples if not e.is_normal]
        if not self.normal and not self.defective:
            raise ValueError("no training examples")

    def __call__(self) -> Example:
        if self.replay and self.rng.random() < self.replay:
            pools = [pool for pool in (self.normal, self.defective) if pool]
            return self.rng.choice(self.rng.choice(pools)).without_questions()
        kinds = [k for k, pool in (("normal", self.normal), ("neutral", self.defective), ("cue", self.defective))
                 if pool]
        kind = self.rng.choice(kinds)
        example = self.rng.choice(self.normal if kind == "normal" else self.defective)
        if not self.questions or not example.questions:
            return example.without_questions()
        cue = [i for i, t in enumerate(example.question_types) if t in DEFECT_QUESTION_TYPES]
        neutral = [i for i, t in enumerate(example.question_types) if t not in DEFECT_QUESTION_TYPES]
        chosen = cue if (kind == "cue" and cue) or not neutral else neutral
        if self.rng.random() < self.single_question:
            chosen = [self.rng.choice(chosen)]
        return example.subset(chosen)

    def batch(self, size: int) -> list[Example]:
        return [self() for _ in range(size)]


def tokenizer_corpus_texts(root: str | Path, files: tuple[str, ...] = ("mmad_train.json",)) -> list[str]:
    """Full prompts and targets of the training questions: the text the project tokenizer is fitted on.

    Whole prompts (instructions, image roles, questions, options) go in so that the fixed
    prompt text becomes few, long tokens, which is most of the training compute saved.
    """
    texts = [CONTRACT_INSTRUCTIONS, *IMAGE_ROLES.values()] * 50
    texts += [NOTE_FORMAT.format(ratio=tenths / 10, side=side, box=[0, 0, 25, 25])
              for tenths in range(int(MAX_SCORE_RATIO * 10) + 1) for side in ("above", "below")]
    labels = set()
    for name in files:
        for example in load_examples(root, name):
            for question in example.questions:
                texts.append(question.render(1))
            texts.append(target_for(example))
            if example.defect:
                labels.add(defect_title(example.category, example.defect))
    texts += [HINT_FORMAT.format(label=label) for label in sorted(labels)] * 20
    return texts
