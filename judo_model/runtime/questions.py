"""A question asked about the query image (MMAD-style multiple choice, or open).

Kept apart from the prompt builder so the frame path can carry questions without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One multiple-choice (or open) question about the query image."""

    text: str
    options: Mapping[str, str] | None = None

    def render(self, number: int) -> str:
        lines = [f"Question {number}: {self.text.strip()}"]
        for letter, option in (self.options or {}).items():
            lines.append(f"{letter}: {option}")
        return "\n".join(lines)
