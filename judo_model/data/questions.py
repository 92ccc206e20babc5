"""MMAD-style multiple-choice questions for a rendered image.

Wording follows MMAD's ``mmad.json``. Defective images get all seven subtasks;
normal images only Anomaly Detection and the object questions, as in MMAD. The
correct letter of every question is spread evenly over the option positions by
:class:`LetterBalancer`, so a model cannot gain by favouring a letter.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from judo_model.data.knowledge import CATEGORY_FACTS, CategoryFacts, category_facts
from judo_model.mmad.format import ANSWER_LETTERS, MMADQuestion

ANOMALY_QUESTION = "Is there any defect in the object?"
DEFECT_PREFIX = "There is a defect in the object. "
CLASSIFICATION_QUESTION = DEFECT_PREFIX + "What is the type of the defect?"
LOCALIZATION_QUESTION = DEFECT_PREFIX + "Where is the defect?"
DESCRIPTION_QUESTION = DEFECT_PREFIX + "What is the appearance of the defect?"
ANALYSIS_QUESTION = DEFECT_PREFIX + "What is the effect of the defect on the product?"
OBJECT_QUESTION = "What kind of product is in the image?"

#: 3 x 3 image regions, row-major, as MMAD phrases locations.
REGIONS = ("Top left", "Top center", "Top right", "Center left", "Center", "Center right",
           "Bottom left", "Bottom center", "Bottom right")
N_CHOICES = 4


class LetterBalancer:
    """Chooses the correct answer's position so every position is used equally often.

    Positions are dealt from a shuffled deck per option count and the deck is
    refilled when empty, so counts never differ by more than one per deck.
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self._decks: dict[int, list[int]] = defaultdict(list)

    def position(self, n_options: int) -> int:
        deck = self._decks[n_options]
        if not deck:
            deck.extend(int(i) for i in self.rng.permutation(n_options))
        return deck.pop()

    def ask(self, question: str, question_type: str, correct: str, distractors: Sequence[str]) -> MMADQuestion:
        """A question whose options are the shuffled distractors with ``correct`` at a balanced position."""
        others = [d for d in dict.fromkeys(distractors) if d != correct]
        others = [others[i] for i in self.rng.permutation(len(others))]
        position = self.position(len(others) + 1)
        ordered = others[:position] + [correct] + others[position:]
        options = dict(zip(ANSWER_LETTERS, ordered))
        return MMADQuestion(Question=question, Options=options, Answer=ANSWER_LETTERS[position], type=question_type)


def region_of(mask: np.ndarray) -> int:
    """Index into :data:`REGIONS` of the cell holding the mask's centre of mass."""
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    row = min(2, int(rows.mean() / height * 3))
    col = min(2, int(cols.mean() / width * 3))
    return row * 3 + col


def _far_regions(index: int) -> list[str]:
    """Regions two cells away from ``index`` (never neighbours, so never ambiguous).

    For the centre cell nothing is two cells away, so the four corners are used.
    """
    row, col = divmod(index, 3)
    far = [REGIONS[i] for i in range(9) if max(abs(i // 3 - row), abs(i % 3 - col)) >= 2]
    return far or [REGIONS[i] for i in range(9) if abs(i // 3 - row) + abs(i % 3 - col) >= 2]


def _pick(rng: np.random.Generator, pool: Sequence[str], count: int) -> list[str]:
    pool = list(dict.fromkeys(pool))
    return [pool[i] for i in rng.choice(len(pool), size=min(count, len(pool)), replace=False)]


def _distractors(rng: np.random.Generator, near: Sequence[str], far: Sequence[str], exclude: str) -> list[str]:
    """Up to three wrong options: same-category ones first, then from other categories."""
    near = [n for n in dict.fromkeys(near) if n != exclude]
    chosen = _pick(rng, near, N_CHOICES - 1) if near else []
    rest = [f for f in far if f != exclude and f not in chosen]
    return chosen + _pick(rng, rest, N_CHOICES - 1 - len(chosen))


def _other_categories(facts: CategoryFacts) -> list[CategoryFacts]:
    return [f for name, f in CATEGORY_FACTS.items() if name != facts.name]


def defect_questions(facts: CategoryFacts, defect: str, mask: np.ndarray, rng: np.random.Generator,
                     balancer: LetterBalancer) -> list[MMADQuestion]:
    """Defect Classification, Localization, Description and Analysis for one defective image."""
    truth = facts.defects[defect]
    siblings = [f for name, f in facts.defects.items() if name != defect]
    # Other categories' defects of the same family (another "Crack") would be a second right answer.
    foreign = [d for other in _other_categories(facts) for d in other.defects.values() if d.title != truth.title]
    region = region_of(mask)
    return [
        balancer.ask(CLASSIFICATION_QUESTION, "Defect Classification", truth.title,
                     _distractors(rng, [s.title for s in siblings], [d.title for d in foreign], truth.title)),
        balancer.ask(LOCALIZATION_QUESTION, "Defect Localization", REGIONS[region],
                     _pick(rng, _far_regions(region), N_CHOICES - 1)),
        balancer.ask(DESCRIPTION_QUESTION, "Defect Description", truth.appearance,
                     _distractors(rng, [s.appearance for s in siblings], [d.appearance for d in foreign],
                                  truth.appearance)),
        balancer.ask(ANALYSIS_QUESTION, "Defect Analysis", truth.consequence,
                     _distractors(rng, [s.consequence for s in siblings], [d.consequence for d in foreign],
                                  truth.consequence)),
    ]


def object_classification(facts: CategoryFacts, rng: np.random.Generator, balancer: LetterBalancer) -> MMADQuestion:
    """Which product: the category's display name among three other products'."""
    return balancer.ask(OBJECT_QUESTION, "Object Classification", facts.display_name,
                        _pick(rng, [f.display_name for f in _other_categories(facts)], N_CHOICES - 1))


def anomaly_detection(defect: bool, balancer: LetterBalancer) -> MMADQuestion:
    return balancer.ask(ANOMALY_QUESTION, "Anomaly Detection", "Yes." if defect else "No.", ["No." if defect else "Yes."])


def object_questions(facts: CategoryFacts, attributes: dict[str, str], rng: np.random.Generator,
                     balancer: LetterBalancer) -> list[MMADQuestion]:
    """Object Classification plus the category's Object Structure / Object Details questions."""
    questions = [object_classification(facts, rng, balancer)]
    for item in facts.object_questions:
        correct = attributes[item.attribute] if item.attribute else item.answer
        if correct is None:
            raise ValueError(f"{facts.name}: object question {item.question!r} has no answer")
        wrong = [c for c in item.choices if c != correct]
        questions.append(balancer.ask(item.question, item.question_type, correct,
                                      _pick(rng, wrong, N_CHOICES - 1)))
    return questions


def build_conversation(category: str, defect: str | None, mask: np.ndarray | None, attributes: dict[str, str],
                       rng: np.random.Generator, balancer: LetterBalancer) -> list[MMADQuestion]:
    """The full MMAD conversation for one image: Anomaly Detection first, as MMAD asks it first."""
    facts = category_facts(category)
    conversation = [anomaly_detection(defect is not None, balancer)]
    if defect is not None:
        if mask is None or not mask.any():
            raise ValueError(f"defective {category}/{defect} image needs a non-empty mask")
        conversation += defect_questions(facts, defect, mask, rng, balancer)
    return conversation + object_questions(facts, attributes, rng, balancer)
