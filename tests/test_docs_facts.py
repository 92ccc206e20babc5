"""What the docs say about the shipped tiny JUDO matches ``checkpoints/judo-tiny`` itself."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "judo-tiny"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: "2.26 M parameters", "2.26M-parameter": a rounded size claim
SIZE_CLAIM = re.compile(r"(\d+(?:\.\d+)?)\s?M[-\s]parameters?")
#: "1,718-token BPE", "1 718-token tokenizer": a vocabulary claim
VOCAB_CLAIM = re.compile(r"(\d[\d, ]*\d|\d)\s?k?-token\s(?:BPE|tokenizer|vocabulary)")

pytestmark = pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(),
                                reason="checkpoints/judo-tiny not shipped in this tree")


def checkpoint_parameters() -> int:
    """Number of weights in the safetensors file, read from its header (no model is built)."""
    with open(CHECKPOINT / "model.safetensors", "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def checkpoint_vocabulary() -> int:
    config = json.loads((CHECKPOINT / "config.json").read_text())
    tokenizer = json.loads((CHECKPOINT / "tokenizer.json").read_text())
    size = len(tokenizer["model"]["vocab"]) + sum(t["id"] not in tokenizer["model"]["vocab"].values()
                                                  for t in tokenizer.get("added_tokens", []))
    assert config["text_config"]["vocab_size"] == size
    return size


def test_docs_give_the_shipped_checkpoints_parameter_count():
    params = checkpoint_parameters()
    model_doc = (ROOT / "docs" / "judo_model.md").read_text()
    assert f"{params:,} parameters" in model_doc
    for path in DOCS:
        for claim in SIZE_CLAIM.finditer(path.read_text()):
            assert float(claim.group(1)) == round(params / 1e6, 2), f"{path.name}: {claim.group(0)!r}"


def test_docs_give_the_shipped_tokenizers_vocabulary():
    vocab = checkpoint_vocabulary()
    assert f"{vocab:,} tokens" in (ROOT / "docs" / "judo_model.md").read_text()
    for path in DOCS:
        for claim in VOCAB_CLAIM.finditer(path.read_text()):
            assert "k" not in claim.group(0).split("-")[0], f"{path.name}: {claim.group(0)!r}"
            assert int(re.sub(r"[, ]", "", claim.group(1))) == vocab, f"{path.name}: {claim.group(0)!r}"
