"""The options of one ``judo train`` run, one dataclass per stage (importable without torch, for the CLI).

The defaults are the recipe that trained ``checkpoints/judo-tiny`` (``make train``); the options
kept are those that shipped plus those the ablation rows (a)-(e) of ``benchmarks/judo_ablation.py``
switch. Experiments that never shipped are in ``docs/judo_training.md`` with the commit holding their code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

STAGES = ("note", "seg", "sft", "grpo")


@dataclass(frozen=True)
class NoteStage:
    """Stage 0: text-only evidence notes, the target writing what the note says."""

    #: the learning rate stays constant: the copy circuit forms late (a phase change)
    min_lr_ratio: ClassVar[float] = 1.0

    steps: int = 3100
    batch_size: int = 16
    lr: float = 1e-3
    #: share of notes above the threshold, and of those naming a defect type (type-heavy notes)
    above_share: float = 0.85
    hint_share: float = 0.95
    #: with ``product_note``: the first this many steps read plain notes (the copy forms first)
    plain_steps: int = 2500
    #: with ``product_note``: share of product notes followed by one MMAD question the note answers
    question_share: float = 0.5
    #: weight of each question kind, in ``note_reading.QUESTION_KINDS``' order; empty: uniform
    question_weights: tuple[float, ...] = (1.0, 1.5, 1.0, 1.0, 2.0, 2.0)
    #: with ``product_note``: share of product notes naming an invented product
    unseen_share: float = 0.15


@dataclass(frozen=True)
class SegStage:
    """Stage 1: juxtaposed segmentation (verdict, type and region; no question)."""

    min_lr_ratio: ClassVar[float] = 0.1

    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    #: share of every batch replaying Stage 0 notes, so the images do not wash the copying out
    note_replay: float = 0.2


@dataclass(frozen=True)
class SftStage:
    """Stage 2: MMAD question answering with domain knowledge, replaying Stage 1."""

    min_lr_ratio: ClassVar[float] = 0.1

    steps: int = 1000
    batch_size: int = 8
    lr: float = 5e-4
    #: share of prompts asking one question (as the MMAD harness does); the rest ask all of the image's
    single_question: float = 0.4
    #: share of draws that are Stage 1 examples, so the verdict and region are not overwritten
    replay: float = 0.3
    #: share of prompts carrying the product's domain knowledge (evaluation never shows it)
    domain_knowledge_prob: float = 0.25
    #: the Defect Classification answer names the note's type where it is an option
    answer_type_from_note: bool = True


@dataclass(frozen=True)
class GrpoStage:
    """Stage 3: TRL GRPO with JUDO's rewards, guided sampling (off in the shipped recipe: ``steps`` 0)."""

    steps: int = 0
    lr: float = 1e-4
    generations: int = 4
    prompts_per_step: int = 2
    beta: float = 0.04


@dataclass(frozen=True)
class Recipe:
    """One training run: the per-stage options and the prompt options every stage shares."""

    note: NoteStage = field(default_factory=NoteStage)
    seg: SegStage = field(default_factory=SegStage)
    sft: SftStage = field(default_factory=SftStage)
    grpo: GrpoStage = field(default_factory=GrpoStage)
    #: a normal reference image beside the query
    reference: bool = True
    #: how the prefilter's evidence is shown (``runtime.evidence.EVIDENCE_ROUTES``); None: no evidence
    evidence_route: str | None = "heat_crop_text"
    #: the evidence note also names the known product the image looks most like
    product_note: bool = True
    #: verdict targets name the note's defect type where it names one
    type_from_note: bool = True
    seed: int = 0
    threads: int = 1

    def as_dict(self) -> dict:
        """The recipe as ``judo_training.json`` records it (stages nested, prompt options top-level)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any]) -> "Recipe":
        """A recorded recipe, nested or flat (files written before the stages were grouped); options
        no longer in the recipe are ignored, missing ones take the defaults."""
        values = dict(option_values(cls()))
        for stage, name in values:
            nested = recorded.get(stage) if stage else None
            if isinstance(nested, Mapping) and name in nested:
                values[stage, name] = nested[name]
            elif flat_name(stage, name) in recorded:
                values[stage, name] = recorded[flat_name(stage, name)]
        return cls().with_values(values)

    def with_values(self, values: Mapping[tuple[str | None, str], Any]) -> "Recipe":
        """This recipe with some options replaced, keyed by ``(stage or None, option)``."""
        shared = {name: value for (stage, name), value in values.items() if stage is None}
        stages = {stage: replace(getattr(self, stage),
                                 **{name: _typed(value) for (s, name), value in values.items() if s == stage})
                  for stage in STAGES}
        return replace(self, **stages, **shared)


#: Flat names of the options recorded before the stages were grouped, where not ``<stage>_<option>``.
_FLAT_NAMES = {("seg", "note_replay"): "note_replay", ("seg", "batch_size"): "batch_size",
               ("sft", "batch_size"): "batch_size", ("sft", "single_question"): "single_question",
               ("sft", "domain_knowledge_prob"): "domain_knowledge_prob",
               ("sft", "answer_type_from_note"): "answer_type_from_note"}


def flat_name(stage: str | None, name: str) -> str:
    """The option's key in a flat (pre-grouping) recipe record, e.g. the shipped checkpoint's."""
    if stage is None:
        return name
    return _FLAT_NAMES.get((stage, name), f"{stage}_{name}")


def option_values(recipe: Recipe) -> Iterator[tuple[tuple[str | None, str], Any]]:
    """Every option of ``recipe`` as ``((stage or None, name), value)``, stages first."""
    for stage in STAGES:
        for option in fields(getattr(recipe, stage)):
            yield (stage, option.name), getattr(getattr(recipe, stage), option.name)
    for option in fields(recipe):
        if option.name not in STAGES:
            yield (None, option.name), getattr(recipe, option.name)


def _typed(value: Any) -> Any:
    """JSON lists back to the tuples the recipe holds."""
    return tuple(value) if isinstance(value, list) else value
