"""Where tests find the real evaluation images: ``$JUDO_REAL_DATA``, else ``../shared/data/real`` next to the repo.

Tests that need them mark themselves with :data:`needs_real`; without the folder they skip and say how to
point at it (docs/data.md describes the layout).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
REAL = Path(os.environ.get("JUDO_REAL_DATA") or DEFAULT_REAL).expanduser()
SKIP_REASON = f"real images not found at {REAL}: set JUDO_REAL_DATA=<folder> (see docs/data.md)"

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=SKIP_REASON)
