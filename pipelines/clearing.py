"""Who decides a flagged frame's verdict, per product: JUDO clears it only where that was measured reliable.

:class:`ProductPolicy` holds what a replica needs per product: whether JUDO may clear a frame the
prefilter flagged (a ``judo_clearing.json`` in the bank folder measured with the serving model,
judged by the config's ``judo.clearing`` rule) and the product's domain knowledge (its defect
types). :func:`decide` is the rule itself; ``pipelines.serve_app.verdict_from_result`` applies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from judo_model.runtime.clearing import ClearingRecord, ClearingRule, clearing_allowed
from judo_model.runtime.vocabulary import (
    DOMAIN_KNOWLEDGE_FILE,
    decoding_choices,
    load_domain_knowledge,
    product_vocabulary,
)

log = logging.getLogger(__name__)


def decide(flagged: bool, judo_says_defect: bool | None, may_clear: bool) -> tuple[bool, str]:
    """(is_anomalous, decided_by) of a frame JUDO answered (``judo_says_defect`` None: no readable
    verdict). A flagged frame stays flagged unless JUDO says no *and* may clear this product."""
    if judo_says_defect is None:
        return flagged, "prefilter-judo-unreadable" if flagged else "prefilter"
    if not flagged:
        return judo_says_defect, "judo"
    if judo_says_defect:
        return True, "judo-confirmed"
    return (False, "judo-cleared") if may_clear else (True, "prefilter-flag-kept")


@dataclass
class ProductPolicy:
    """One product's clearing permission and domain-knowledge types, as a replica loaded them."""

    product: str
    may_clear: bool = False
    knowledge: dict[str, str] = field(default_factory=dict)
    clearing: ClearingRecord | None = None

    def vocabulary(self, library_types: list[str] | None) -> list[str]:
        """The types this product's verdicts may name: its library's (from the request) and its knowledge's."""
        return product_vocabulary(library_types, list(self.knowledge))

    def choices(self, library_types: list[str] | None) -> list[str]:
        """What JUDO's type slot is decoded among for this product (``unknown`` alone without a vocabulary)."""
        return decoding_choices(self.vocabulary(library_types))

    @classmethod
    def load(cls, product: str, bank: str | Path | None, domain_knowledge: str | Path | None,
             rule: ClearingRule, serving_version: str | None) -> "ProductPolicy":
        """From the product's bank folder (``judo_clearing.json``; ``domain_knowledge.json`` unless
        ``domain_knowledge`` names another file)."""
        bank = Path(bank) if bank else None
        record = ClearingRecord.load(bank) if bank else None
        knowledge_path = Path(domain_knowledge) if domain_knowledge else (bank / DOMAIN_KNOWLEDGE_FILE if bank else None)
        knowledge = load_domain_knowledge(knowledge_path, product) if knowledge_path and knowledge_path.is_file() else {}
        may_clear = clearing_allowed(record, rule, serving_version)
        if record is not None and not may_clear:
            log.info("JUDO may not clear %s frames: %s", product, record.summary(rule, serving_version))
        return cls(product, may_clear, knowledge, record)


class ProductPolicies:
    """Every configured product's :class:`ProductPolicy`; an unconfigured product (an ad-hoc HTTP
    question) gets the default: no clearing, no domain knowledge."""

    def __init__(self, policies: dict[str, ProductPolicy] | None = None):
        self.policies = dict(policies or {})

    def of(self, product: str) -> ProductPolicy:
        return self.policies.get(product) or ProductPolicy(product)

    @classmethod
    def load(cls, products: dict[str, dict] | None, rule: ClearingRule,
             serving_version: str | None) -> "ProductPolicies":
        """``products``: ``{name: {"bank": path, "domain_knowledge": path | None}}`` (the config's
        ``products`` section as JSON)."""
        return cls({name: ProductPolicy.load(name, entry.get("bank"), entry.get("domain_knowledge"), rule,
                                             serving_version)
                    for name, entry in (products or {}).items()})
