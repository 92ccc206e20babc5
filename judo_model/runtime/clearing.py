"""Whether JUDO may clear a frame the prefilter flagged, per product: measured, stored, decided.

JUDO's "no defect" on a flagged frame is a clearing. A plant loses a defect each time JUDO clears
a real one, so clearing is allowed only where it was measured reliable on that product's own
labelled validation frames: :class:`ClearingRecord` keeps the counts (stored as
``judo_clearing.json`` in the product's bank folder, with the model version that was measured) and
:func:`clearing_allowed` applies the rule (the upper confidence bound of the missed-defect rate
under a limit, with enough defect frames). Anywhere else JUDO only annotates a flagged frame.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from scipy import stats

#: the record's file name in a bank folder
CLEARING_FILE = "judo_clearing.json"
CLEARING_FORMAT = "judo-clearing"
CLEARING_FORMAT_VERSION = 1


def missed_rate_upper_bound(cleared_defects: int, defects: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of the rate at which JUDO clears real defects
    (1.0 without defect frames): what the plant may lose at worst, at ``confidence``."""
    if defects <= 0:
        return 1.0
    if cleared_defects >= defects:
        return 1.0
    return float(stats.beta.ppf(confidence, cleared_defects + 1, defects - cleared_defects))


@dataclass
class ClearingRule:
    """When a product's clearing counts as reliable (``judo.clearing`` in the pipeline config)."""

    max_missed_defect_rate: float = 0.05
    confidence: float = 0.95
    min_defect_frames: int = 20


@dataclass
class ClearingRecord:
    """JUDO's answers on one product's labelled validation frames: how often its "no" was right."""

    product: str
    model_version: str
    good_frames: int
    defect_frames: int
    good_cleared: int
    defects_cleared: int
    sources: list[str] = field(default_factory=list)
    measured_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def cleared(self) -> int:
        return self.good_cleared + self.defects_cleared

    @property
    def clearing_precision(self) -> float | None:
        """Of the frames JUDO cleared, the share that were good (None: it cleared none)."""
        return self.good_cleared / self.cleared if self.cleared else None

    @property
    def missed_defect_rate(self) -> float | None:
        """Of the defect frames, the share JUDO cleared (None: no defect frames)."""
        return self.defects_cleared / self.defect_frames if self.defect_frames else None

    def summary(self, rule: ClearingRule, serving_version: str | None = None) -> dict:
        """The counts, rates, bound and decision as stored and printed."""
        return {**asdict(self), "clearing_precision": self.clearing_precision,
                "missed_defect_rate": self.missed_defect_rate,
                "missed_defect_rate_upper": missed_rate_upper_bound(self.defects_cleared, self.defect_frames,
                                                                    rule.confidence),
                "rule": asdict(rule), "allowed": clearing_allowed(self, rule, serving_version)}

    def save(self, bank_dir: str | Path, rule: ClearingRule) -> Path:
        path = Path(bank_dir) / CLEARING_FILE
        path.write_text(json.dumps({"format": CLEARING_FORMAT, "format_version": CLEARING_FORMAT_VERSION,
                                    **self.summary(rule)}, indent=2))
        return path

    @classmethod
    def load(cls, bank_dir: str | Path) -> "ClearingRecord | None":
        """The bank folder's record, None when it has none (JUDO then never clears that product)."""
        path = Path(bank_dir) / CLEARING_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        if raw.get("format") != CLEARING_FORMAT or raw.get("format_version") != CLEARING_FORMAT_VERSION:
            raise ValueError(f"{path}: format {raw.get('format')} v{raw.get('format_version')}, expected "
                             f"{CLEARING_FORMAT} v{CLEARING_FORMAT_VERSION}")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in names})


def clearing_allowed(record: ClearingRecord | None, rule: ClearingRule, serving_version: str | None = None) -> bool:
    """JUDO may clear this product's flagged frames: a record measured with the serving model
    (when named), at least ``min_defect_frames`` defect frames, and the upper bound of its
    missed-defect rate at or under ``max_missed_defect_rate``."""
    if record is None or record.defect_frames < rule.min_defect_frames:
        return False
    if serving_version is not None and record.model_version != serving_version:
        return False
    bound = missed_rate_upper_bound(record.defects_cleared, record.defect_frames, rule.confidence)
    return bound <= rule.max_missed_defect_rate
