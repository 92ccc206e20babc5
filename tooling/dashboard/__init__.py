"""``judo dashboard``: the operator's web view of a running pipeline.

A live gallery of JUDO verdicts (frame with box and mask overlay beside the normal reference it
was compared with, defect type, reasoning, scores, trace), line health (frames/s, routed %,
defect rate per line and camera, per-stage latency percentiles, JUDO replicas over time) and
operator feedback (confirm / reject / relabel) published to the config's feedback topic. Login is
always on (viewer and operator roles, :mod:`tooling.dashboard.auth`); HTTPS with a certificate.
See docs/dashboard.md; the sub-command itself is registered by :mod:`tooling.cli`.
"""

#: Where `judo dashboard` listens unless told otherwise.
DEFAULT_PORT = 8090
