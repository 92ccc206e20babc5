"""Stage 0, reading the prefilter's note: text-only prompts whose target repeats the note.

The tiny model learns to copy a note's box and type only with far more examples than Stage 1's
images, so it first reads random notes in the real prompt's words (no images) and writes what they
say; with ``categories`` a note also names a product (or, with ``unseen_share``, an invented one)
and may carry one MMAD question it answers. Measurements: docs/judo_training.md, Stage 0 sections.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from judo_model.data.knowledge import CATEGORY_FACTS, category_facts
from judo_model.data.questions import (OBJECT_QUESTION, LetterBalancer, anomaly_detection, defect_questions,
                                       object_classification)
from judo_model.runtime.evidence import MAX_SCORE_RATIO, format_note, note_says_above
from judo_model.runtime.output import BOX_STEP, COORDINATE_SCALE, boxes_to_mask, format_target
from judo_model.runtime.prompting import JudoPrompt, Question, image_introductions, task_text
from judo_model.training.data import reasoning_for

#: The roles of a Stage 1 prompt with a reference and an evidence image.
ROLES = ("reference", "query", "evidence")
#: Most synthetic defects span less than this (0-1000 units); a few note boxes are larger.
TYPICAL_SIDE = 400
#: Default share of notes above the threshold (the first Stage 0's; the recipe sets its own).
ABOVE_SHARE = 0.74
#: Default share of notes naming a defect type (the first Stage 0's; the recipe sets its own).
HINT_SHARE = 0.8
#: The MMAD questions a note answers, in the order :meth:`NoteReadingSampler._with_product` builds them.
QUESTION_KINDS = ("Anomaly Detection", "Object Classification", "Defect Classification", "Defect Localization",
                  "Defect Description", "Defect Analysis")
#: Words of invented product names: a material (or none) and a part.
_MATERIALS = ("steel", "brass", "rubber", "plastic", "glass", "copper", "aluminium", "nylon", "cast iron", "carbon",
              "silicone", "titanium", "paper", "foam")
_PARTS = ("gear", "valve", "spring", "bearing", "gasket", "hinge", "bracket", "connector", "lens", "pipe", "panel",
          "clip", "bolt", "rivet", "cap", "sleeve", "housing", "shaft", "pulley", "button", "tube", "disc", "plate",
          "grille", "hose", "knob", "label", "seal", "socket", "fan blade", "spoon", "key", "zipper", "battery",
          "magnet", "filter", "pin", "lid", "tray", "cup")


@lru_cache(maxsize=1)
def _catalogue_words() -> frozenset[str]:
    """Every word of a catalogue product's name (read once: invented names must avoid them all)."""
    return frozenset(word for facts in CATEGORY_FACTS.values() for word in facts.display_name.lower().split())


def invented_products() -> list[str]:
    """Product names no catalogue product has a word of (so never a held-out product's name)."""
    taken = _catalogue_words()
    parts = [part for part in _PARTS if not taken & set(part.split())]
    materials = [material for material in _MATERIALS if not taken & set(material.split())]
    return sorted(parts + [f"{material} {part}" for material in materials for part in parts])


class NoteReadingSampler:
    """Random evidence notes and the contract a reader of the note alone would write."""

    def __init__(self, defect_titles: Sequence[str], seed: int = 0, *, above_share: float = ABOVE_SHARE,
                 hint_share: float = HINT_SHARE, categories: Sequence[str] | None = None,
                 question_share: float = 0.0, question_weights: Sequence[float] | None = None,
                 unseen_share: float = 0.0):
        if not defect_titles:
            raise ValueError("note reading needs the defect titles of the training data")
        for name, share in (("above_share", above_share), ("hint_share", hint_share),
                            ("question_share", question_share), ("unseen_share", unseen_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {share}")
        if (question_share or unseen_share) and not categories:
            raise ValueError("questions about a note and invented products need the categories of the known products")
        if question_weights is not None and (len(question_weights) != len(QUESTION_KINDS)
                                             or min(question_weights) < 0 or not sum(question_weights)):
            raise ValueError(f"question_weights needs {len(QUESTION_KINDS)} non-negative weights "
                             f"({', '.join(QUESTION_KINDS)}), not all zero; got {question_weights}")
        self.titles = sorted(set(defect_titles))
        self.categories = sorted(categories) if categories else None
        self.above_share, self.hint_share, self.question_share = above_share, hint_share, question_share
        self.question_weights = tuple(question_weights) if question_weights is not None else None
        self.unseen_share = unseen_share
        self.invented = invented_products() if unseen_share else None
        self.rng = random.Random(seed)

    def _ratio(self, above_share: float | None = None) -> float:
        """A score / threshold ratio, above the threshold with probability ``above_share``."""
        if self.rng.random() < (self.above_share if above_share is None else above_share):
            return self.rng.uniform(1.0, MAX_SCORE_RATIO / 3)
        return self.rng.uniform(0.2, 1.0)

    def _box(self) -> tuple[int, int, int, int]:
        steps = COORDINATE_SCALE // BOX_STEP
        side = TYPICAL_SIDE // BOX_STEP if self.rng.random() < 0.9 else steps
        corners = []
        for _ in range(2):
            start = self.rng.randrange(0, steps)
            end = min(steps, start + self.rng.randint(1, side))
            corners.append((start * BOX_STEP, end * BOX_STEP))
        (x1, x2), (y1, y2) = corners
        return x1, y1, x2, y2

    def __call__(self) -> tuple[JudoPrompt, str]:
        if self.categories:
            return self._with_product()
        ratio = self._ratio()
        box = self._box()
        title = self.rng.choice(self.titles) if self.rng.random() < self.hint_share else None
        return self._pair(ratio, box, title, format_note(ratio, box, title))

    def _pair(self, ratio: float, box, title: str | None, note: str, questions: Sequence[Question] = (),
              answers: Sequence[str] = ()) -> tuple[JudoPrompt, str]:
        content = image_introductions(ROLES, with_images=False)
        content.append({"type": "text", "text": task_text(ROLES, evidence_note=note, questions=questions or None)})
        prompt = JudoPrompt(messages=[{"role": "user", "content": content}], images=[], image_roles=())
        if not note_says_above(ratio):
            return prompt, format_target(reasoning=reasoning_for(None), defect=False, answers=answers)
        return prompt, format_target(reasoning=reasoning_for(boxes_to_mask([box], 100, 100)), defect=True,
                                     defect_type=title, boxes=[box], answers=answers)

    def _with_product(self) -> tuple[JudoPrompt, str]:
        """A note naming a product (and one of its defect types), perhaps with one question it answers."""
        if self.unseen_share and self.rng.random() < self.unseen_share:
            return self._with_unseen_product()
        ratio, box = self._ratio(), self._box()
        facts = category_facts(self.rng.choice(self.categories))
        defect = self.rng.choice(sorted(facts.defects))
        title = facts.defects[defect].title if self.rng.random() < self.hint_share else None
        if self.rng.random() >= self.question_share:
            return self._pair(ratio, box, title, format_note(ratio, box, title, facts.display_name))
        kind = self.rng.choices(QUESTION_KINDS, weights=self.question_weights)[0] if self.question_weights else None
        if kind == "Anomaly Detection":
            ratio = self._ratio(above_share=0.5)
        elif kind is not None and kind != "Object Classification":  # a defect question needs a named defect
            ratio, title = self._ratio(above_share=1.0), facts.defects[defect].title
        note = format_note(ratio, box, title, facts.display_name)
        rng = np.random.default_rng(self.rng.randrange(2 ** 32))
        balancer = LetterBalancer(rng)
        above = note_says_above(ratio)
        asked = [anomaly_detection(above, balancer), object_classification(facts, rng, balancer)]
        if above and title:
            asked += defect_questions(facts, defect, boxes_to_mask([box], 100, 100), rng, balancer)
        question = asked[self.rng.randrange(len(asked))] if kind is None else asked[QUESTION_KINDS.index(kind)]
        return self._asking(ratio, box, title, note, question)

    def _asking(self, ratio: float, box, title: str | None, note: str, question) -> tuple[JudoPrompt, str]:
        """:meth:`_pair` with one MMAD question after the note, answered by its right option's text."""
        return self._pair(ratio, box, title, note, [Question(question.Question, dict(question.Options))],
                          [question.Options[question.Answer]])

    def _with_unseen_product(self) -> tuple[JudoPrompt, str]:
        """A note naming an invented product, without a hint; perhaps asked whether it is defective or
        which product it shows (the other questions need a product's knowledge)."""
        name, box = self.rng.choice(self.invented), self._box()
        if self.rng.random() >= self.question_share:
            ratio = self._ratio()
            return self._pair(ratio, box, None, format_note(ratio, box, None, name))
        weights = self.question_weights[:2] if self.question_weights else None
        kind = self.rng.choices(QUESTION_KINDS[:2], weights=weights)[0]
        ratio = self._ratio(above_share=0.5 if weights and kind == QUESTION_KINDS[0] else None)
        balancer = LetterBalancer(np.random.default_rng(self.rng.randrange(2 ** 32)))
        if kind == QUESTION_KINDS[0]:
            question = anomaly_detection(note_says_above(ratio), balancer)
        else:
            known = [category_facts(c).display_name for c in self.categories]
            known = self.rng.sample(known, min(3, len(known)))
            invented = self.rng.sample([other for other in self.invented if other != name], 3)
            question = balancer.ask(OBJECT_QUESTION, kind, name, self.rng.sample(known + invented, 3))
        return self._asking(ratio, box, None, format_note(ratio, box, None, name), question)

    def batch(self, size: int) -> list[tuple[JudoPrompt, str]]:
        return [self() for _ in range(size)]
