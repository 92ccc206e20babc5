"""Fault injection during streaming runs: one fault per run, then count what came out.

Each run streams simulated frames (small, rendered once and reused) through the real pipeline —
real Kafka, real Ray, the shipped JUDO on Ray Serve — at a steady camera rate, injects one fault
once a share of them have verdicts, and reads the verdict topic until every produced ``frame_id``
has a verdict (or the time is up). Used by ``tests/test_faults.py`` and ``benchmarks/faults.py``;
the metrics are defined in ``docs/faults.md``.

* :mod:`tooling.faults.catalogue`: the faults (what each one breaks) and their settings/report types;
* :mod:`tooling.faults.stall`: the JUDO replica that can be wedged on demand (never deployed in production);
* :mod:`tooling.faults.watch`: the verdict watcher and the gap/recovery metrics;
* :mod:`tooling.faults.bench`: banks, frames, Kafka and Ray for the runs, and one run per fault.
"""
