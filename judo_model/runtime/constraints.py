"""Guided decoding: the output contract's closed slots (defect type, answer) decoded among given choices.

Used by inference (:meth:`judo_model.runtime.inference.JudoModel.generate`) and by GRPO's guided
sampling, so a model is trained and served under the same constraint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import LogitsProcessor

from judo_model.runtime.output import ANSWER_CLOSE, ANSWER_OPEN, answer_words

DEFECT_YES, DEFECT_CLOSE = "<defect>yes:", "</defect>"


class ChoiceConstraint(LogitsProcessor):
    """Guided decoding of the contract's closed slots (a logits processor for ``generate``).

    ``slots`` maps an opening (``<defect>yes:``, ``<answer>``) to the texts that may follow it,
    each ending with the slot's closing tag. Once the model has written an opening, only tokens
    that continue one of its choices keep their scores; outside a slot the scores are left
    untouched, so the processor costs nothing per step for a large vocabulary. Among the
    allowed choices the model's own preference decides.
    """

    def __init__(self, tokenizer, slots: Mapping[str, Sequence[str]], prompt_length: int):
        self.slots = []
        for opening, choices in slots.items():
            if not choices:
                raise ValueError(f"the slot after {opening!r} needs at least one choice")
            self.slots.append((self._ids(tokenizer, opening), [self._ids(tokenizer, c) for c in dict.fromkeys(choices)]))
        self.prompt_length = prompt_length

    @staticmethod
    def _ids(tokenizer, text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    @classmethod
    def for_output(cls, tokenizer, prompt_length: int, defect_types: Sequence[str] | None = None,
                   answer_options: Sequence[str] | None = None) -> "ChoiceConstraint | None":
        """The verdict's type among ``defect_types``, the answer among ``answer_options`` (None: no slot)."""
        slots = {}
        if defect_types:
            slots[DEFECT_YES] = [f" {name}{DEFECT_CLOSE}" for name in sorted(set(defect_types))]
        if answer_options:
            slots[ANSWER_OPEN] = [f"{answer_words(text)}{ANSWER_CLOSE}" for text in answer_options]
        return cls(tokenizer, slots, prompt_length) if slots else None

    def allowed(self, generated: Sequence[int]) -> list[int] | None:
        """The token ids that may come next, or None where the model writes freely."""
        latest, active = -1, None
        for opening, choices in self.slots:
            width = len(opening)
            for start in range(len(generated) - width, latest, -1):
                if list(generated[start:start + width]) == opening:
                    latest, active = start, (start + width, choices)
                    break
        if active is None:
            return None
        written = list(generated[active[0]:])
        allowed = {choice[len(written)] for choice in active[1]
                   if len(choice) > len(written) and choice[:len(written)] == written}
        return sorted(allowed) if allowed else None

    def constrain_row(self, generated: Sequence[int], row_scores: torch.FloatTensor) -> torch.FloatTensor:
        """One sequence's next-token scores with the tokens its open slot forbids at -inf."""
        allowed = self.allowed(generated)
        if allowed is None:
            return row_scores
        keep = torch.full_like(row_scores, float("-inf"))
        keep[allowed] = 0.0
        return row_scores + keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            scores[row] = self.constrain_row(input_ids[row, self.prompt_length:].tolist(), scores[row])
        return scores


class RowChoiceConstraints(LogitsProcessor):
    """One :class:`ChoiceConstraint` per sequence of a batch (None: that row decodes freely), for
    batches whose rows ask different questions (GRPO's sampled groups)."""

    def __init__(self, constraints: Sequence[ChoiceConstraint | None]):
        self.constraints = list(constraints)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.constraints):
            raise ValueError(f"{len(self.constraints)} row constraints for a batch of {input_ids.shape[0]}")
        for row, constraint in enumerate(self.constraints):
            if constraint is not None:
                scores[row] = constraint.constrain_row(input_ids[row, constraint.prompt_length:].tolist(), scores[row])
        return scores
