"""A product's defect-type vocabulary: the types its verdicts may name, and nothing else.

The vocabulary is the product's own labelled types (its bank's defect library) plus the defect
entries of an MMAD-style ``domain_knowledge.json`` the user supplies for it. A product with
neither gets :data:`UNKNOWN_TYPE`: JUDO's type slot is decoded as ``unknown`` and the verdict
keeps a description, so another product's type name can never appear on this product's verdicts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: the type of a defect on a product without a vocabulary, or of one outside it
UNKNOWN_TYPE = "unknown"
#: the file a bank folder may hold (or ``products.<name>.domain_knowledge`` names)
DOMAIN_KNOWLEDGE_FILE = "domain_knowledge.json"
#: the MMAD entry describing the normal look (not a defect type)
NORMAL_ENTRY = "good"


class DomainKnowledgeError(ValueError):
    """A ``domain_knowledge.json`` that is not the MMAD layout or has no entry for the product."""


def canonical_type(name: str | None) -> str | None:
    """``"Missing Component"`` -> ``"missing_component"`` (as :func:`cluster.messages.canonical_defect_type`)."""
    if not name:
        return None
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or None


def load_domain_knowledge(path: str | Path, product: str) -> dict[str, str]:
    """The product's defect entries (type -> text, ``good`` left out) from an MMAD-style file.

    Accepts MMAD's ``{dataset: {category: {"good": ..., "<defect>": ...}}}``, ``{category: {...}}``,
    or one product's flat ``{"good": ..., "<defect>": ...}``; a file with several categories must
    have one named ``product``.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DomainKnowledgeError(f"{path}: cannot read domain knowledge: {exc}") from None
    entry = _entry_for(raw, product)
    if entry is None:
        raise DomainKnowledgeError(f"{path}: no domain-knowledge entry for product {product!r}")
    return {str(k): str(v) for k, v in entry.items() if str(k) != NORMAL_ENTRY}


def _entry_for(raw: object, product: str) -> dict | None:
    if not isinstance(raw, dict):
        return None
    if raw and all(isinstance(v, str) for v in raw.values()):
        return raw  # one product's flat entry
    if product in raw and isinstance(raw[product], dict):
        return _entry_for(raw[product], product)
    nested = [v for v in raw.values() if isinstance(v, dict)]
    if len(nested) == 1 and len(raw) == 1:  # one dataset or one category: look inside
        return _entry_for(nested[0], product)
    for value in nested:  # MMAD: {dataset: {category: entry}}
        if product in value and isinstance(value[product], dict):
            return _entry_for(value[product], product)
    return None


def product_vocabulary(library_types: list[str] | None, knowledge_types: list[str] | None) -> list[str]:
    """The types a product's verdicts may name: its library's labelled types, then the domain
    knowledge's (underscores as spaces), one per canonical name; empty when it has neither."""
    out: dict[str, str] = {}
    for name in list(library_types or []) + [t.replace("_", " ") for t in knowledge_types or []]:
        key = canonical_type(name)
        if key and key != UNKNOWN_TYPE:
            out.setdefault(key, name)
    return list(out.values())


def decoding_choices(vocabulary: list[str]) -> list[str]:
    """What JUDO's type slot is decoded among: the vocabulary, or ``unknown`` alone without one."""
    return list(vocabulary) if vocabulary else [UNKNOWN_TYPE]


def constrain_type(name: str | None, vocabulary: list[str]) -> tuple[str, str]:
    """(canonical type, description) for a type JUDO wrote: inside the vocabulary it is kept;
    outside it, or without a vocabulary, the type is ``unknown`` and the description says what
    JUDO wrote."""
    key = canonical_type(name)
    allowed = {canonical_type(t) for t in vocabulary}
    if key and key in allowed:
        return key, name or ""
    if key and key != UNKNOWN_TYPE:
        return UNKNOWN_TYPE, f"a defect outside this product's known types (JUDO wrote {name!r})"
    return UNKNOWN_TYPE, "a defect of a type this product has no labelled examples or domain knowledge of"
