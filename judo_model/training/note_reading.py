"""Stage 0, reading the prefilter's note: text-only prompts whose target repeats the note.

The tiny model learns to copy the note's box and defect type only after a phase change
(measured: about 1 000 steps of 16 random notes, with the loss flat near 0.4 before), and
Stage 1's 480 images are too few to get there: the model memorises each image's box from
its pixels instead. So before Stage 1 it reads random notes, in exactly the words and
layout of the real prompt minus the images, and writes the contract that follows them:
above the threshold a defect of the hinted type in the note's box, below it no defect.
Stage 1 then teaches when the images should overrule the note.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from judo_model.output import BOX_STEP, COORDINATE_SCALE, boxes_to_mask, format_target
from judo_model.prompting import JudoPrompt, image_introductions, task_text
from judo_model.training.data import reasoning_for
from judo_model.training.evidence import MAX_SCORE_RATIO, format_note, note_says_above

#: The roles of a Stage 1 prompt with a reference and an evidence image.
ROLES = ("reference", "query", "evidence")
#: Most synthetic defects span less than this (0-1000 units); a few note boxes are larger.
TYPICAL_SIDE = 400
#: Share of notes above the threshold (a uniform score ratio over 0.2-3.3 gives 74 %).
ABOVE_SHARE = 0.74
#: Share of notes naming a defect type (the cached evidence shows one for about 80 %).
HINT_SHARE = 0.8


class NoteReadingSampler:
    """Random evidence notes and the contract a reader of the note alone would write."""

    def __init__(self, defect_titles: Sequence[str], seed: int = 0, *, above_share: float = ABOVE_SHARE,
                 hint_share: float = HINT_SHARE):
        if not defect_titles:
            raise ValueError("note reading needs the defect titles of the training data")
        for name, share in (("above_share", above_share), ("hint_share", hint_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {share}")
        self.titles = sorted(set(defect_titles))
        self.above_share, self.hint_share = above_share, hint_share
        self.rng = random.Random(seed)

    def _ratio(self) -> float:
        """A score / threshold ratio, above the threshold with probability ``above_share``."""
        if self.rng.random() < self.above_share:
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
        ratio = self._ratio()
        box = self._box()
        title = self.rng.choice(self.titles) if self.rng.random() < self.hint_share else None
        note = format_note(ratio, box, title)
        content = image_introductions(ROLES, with_images=False)
        content.append({"type": "text", "text": task_text(ROLES, evidence_note=note)})
        prompt = JudoPrompt(messages=[{"role": "user", "content": content}], images=[], image_roles=())
        if not note_says_above(ratio):
            return prompt, format_target(reasoning=reasoning_for(None), defect=False)
        return prompt, format_target(reasoning=reasoning_for(boxes_to_mask([box], 100, 100)), defect=True,
                                     defect_type=title, boxes=[box])

    def batch(self, size: int) -> list[tuple[JudoPrompt, str]]:
        return [self() for _ in range(size)]
