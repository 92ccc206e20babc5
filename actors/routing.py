"""Routing: which frames JUDO must look at, and the verdict for the ones it need not.

A frame whose prefilter score is above its product's threshold (the calibrated upper
bound of normal scores, see :class:`judo_model.prefilter.calibration.Calibration`) is routed to JUDO; every other frame gets a ``prefilter`` verdict straight away. Thresholds come
from each product's calibrated bank, optionally overridden in the pipeline config.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.messages import Verdict


class UnknownProductError(KeyError):
    pass


@dataclass(frozen=True)
class RouteDecision:
    to_judo: bool
    score: float
    threshold: float


class Router:
    def __init__(self, thresholds: dict[str, float]):
        if not thresholds:
            raise ValueError("the router needs a threshold for at least one product")
        self.thresholds = dict(thresholds)

    def threshold_of(self, product: str) -> float:
        """The product's routing threshold (the prefilter attaches JUDO's evidence by the same one)."""
        try:
            return self.thresholds[product]
        except KeyError:
            raise UnknownProductError(f"no routing threshold for product {product!r}") from None

    def decide(self, product: str, score: float) -> RouteDecision:
        threshold = self.threshold_of(product)
        return RouteDecision(to_judo=score > threshold, score=float(score), threshold=threshold)

    def set_threshold(self, product: str, threshold: float) -> None:
        self.thresholds[product] = float(threshold)


def prefilter_verdict(frame, decision: RouteDecision, *, model_version: str, latency_ms: dict[str, float],
                      trace_id: str) -> Verdict:
    """The verdict for a frame the prefilter passed: normal, with its score and threshold."""
    return Verdict(
        frame_id=frame.frame_id, camera_id=frame.camera_id, line_id=frame.line_id, product=frame.product,
        stage="prefilter", anomaly_score=decision.score, threshold=decision.threshold,
        is_anomalous=decision.to_judo, model_version=model_version,
        latency_ms=dict(latency_ms), trace_id=trace_id, captured_at=frame.captured_at, decided_by="prefilter",
    )
