"""JUDO on Ray Serve: batched, autoscaled, GPU-pinnable replicas that turn suspect frames into verdicts.

Request: a :class:`JudoFrameRequest` (frame metadata, query pixels, k normal references,
the prefilter's anomaly map, score and threshold, optional questions). Response: a
:class:`cluster.messages.Verdict`. The same deployment answers ad-hoc HTTP questions about
one image (``POST /`` with JSON), behind a bearer token when one is configured.

``serve run pipelines.serve_app:app config=pipeline.yaml`` runs it from the pipeline config.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time

import numpy as np

from cluster.messages import Answer, Defect, RLEMask, Verdict, canonical_defect_type
from cluster.telemetry import context_from_carrier, setup_tracing, trace_id_hex, tracer
from judo_model.output import COORDINATE_SCALE, choose_option, valid_boxes
from judo_model.prompting import Question
from judo_model.training.evidence import refine_region
from pipelines.engines import JudoFrameRequest, JudoResult, make_engine

DEPLOYMENT_NAME = "judo"
APP_NAME = "judo"


def verdict_from_result(request: JudoFrameRequest, result: JudoResult) -> Verdict:
    """Combine the prefilter's evidence and JUDO's answer into the frame's verdict.

    Boxes that break the contract (corners out of order, outside 0-1000) are dropped, not
    repaired; the verdict keeps the parser's error, so a malformed output still gives a verdict.
    """
    parsed = result.parsed
    height, width = request.query.shape[:2]
    boxes = valid_boxes(parsed.boxes)
    defect = None
    is_anomalous = bool(parsed.defect) if parsed.defect is not None else request.anomaly_score > request.threshold
    if is_anomalous:
        mask = refine_region(boxes, height, width, request.anomaly_map)
        defect = Defect(
            type=canonical_defect_type(parsed.defect_type),
            boxes=[[min(max(c / COORDINATE_SCALE, 0.0), 1.0) for c in box] for box in boxes],
            mask=RLEMask.encode(mask) if mask.any() else None,
            description=parsed.defect_type or "",
            reasoning=parsed.reasoning or "",
        )
    answers = []
    for i, question in enumerate(request.questions or []):
        text = parsed.answers[i] if i < len(parsed.answers) else ""
        option = choose_option(text, question.options) if question.options else None
        answers.append(Answer(question=question.text, answer=text, option=option))
    return Verdict(
        frame_id=request.frame_id, camera_id=request.camera_id, line_id=request.line_id,
        product=request.product, stage="judo", anomaly_score=request.anomaly_score,
        threshold=request.threshold, is_anomalous=is_anomalous, defect=defect, answers=answers,
        model_version=result.model_version,
        latency_ms={**request.latency_ms, "judo": result.latency_ms},
        trace_id=trace_id_hex(context_from_carrier(request.trace)),
        parse_error=parsed.parse_error, captured_at=request.captured_at,
    )


class JudoReplica:
    """The replica's logic, independent of Serve so it can be tested and reused as is."""

    def __init__(self, judo_config: dict, service_name: str = "judo-inspect", trace_file: str | None = None):
        from pipelines.config import JudoSection

        setup_tracing(f"{service_name}.judo", trace_file=trace_file)
        self.config = JudoSection.model_validate(judo_config)
        self.engine = make_engine(self.config)

    def infer(self, requests: list[JudoFrameRequest]) -> list[Verdict]:
        started = time.perf_counter()
        results = self.engine.infer(requests)
        ended = time.perf_counter()
        verdicts = []
        for request, result in zip(requests, results):
            with tracer().start_as_current_span("judo", context=context_from_carrier(request.trace)) as span:
                span.set_attribute("frame_id", request.frame_id)
                span.set_attribute("product", request.product)
                span.set_attribute("batch_size", len(requests))
                span.set_attribute("batch_ms", (ended - started) * 1000)
                verdict = verdict_from_result(request, result)
                span.set_attribute("is_anomalous", verdict.is_anomalous)
                span.set_attribute("defect_type", verdict.defect.type or "" if verdict.defect else "")
                if verdict.parse_error:
                    span.set_attribute("parse_error", verdict.parse_error)
            verdicts.append(verdict)
        return verdicts


def http_request_to_frame_request(payload: dict) -> JudoFrameRequest:
    """Ad-hoc HTTP question about one image: ``{"image": b64, "product": str, "references": [b64],
    "questions": [{"text": str, "options": {"A": str}}]}`` (optionally ``defect_hint``: a defect type, and
    ``defect_types``: the product's types, which the verdict's type is then decoded as one of)."""
    from judo_model.imaging import decode_image

    def image(field_name: str, value: str) -> np.ndarray:
        try:
            return decode_image(base64.b64decode(value, validate=True))
        except Exception as exc:
            raise ValueError(f"{field_name}: {exc}") from None

    if not isinstance(payload, dict) or "image" not in payload or "product" not in payload:
        raise ValueError("the request needs JSON with 'image' (base64) and 'product'")
    query = image("image", payload["image"])
    references = [image(f"references[{i}]", r) for i, r in enumerate(payload.get("references", []))]
    questions = [Question(text=q["text"], options=q.get("options") or {}) for q in payload.get("questions", [])]
    defect_types = payload.get("defect_types")
    if defect_types is not None and (not isinstance(defect_types, list)
                                     or not all(isinstance(t, str) and t.strip() for t in defect_types)):
        raise ValueError("defect_types: expected a list of non-empty strings")
    return JudoFrameRequest(
        frame_id=str(payload.get("frame_id", "adhoc")), camera_id="http", line_id="http",
        product=str(payload["product"]), captured_at=None, query=query, references=references,
        anomaly_score=float(payload.get("anomaly_score", 0.0)), threshold=float(payload.get("threshold", 0.0)),
        defect_hint=str(payload["defect_hint"]) if payload.get("defect_hint") else None,
        defect_types=list(defect_types) if defect_types else None, questions=questions or None)


def build_judo_deployment(config):
    """The Serve application for ``config.judo`` (a :class:`pipelines.config.PipelineConfig`)."""
    from ray import serve

    judo = config.judo
    replicas = judo.replicas
    autoscaling = {
        "min_replicas": replicas.min,
        "max_replicas": replicas.max,
        "initial_replicas": replicas.initial if replicas.initial is not None else max(replicas.min, 1),
        "target_ongoing_requests": replicas.target_ongoing_requests,
        "upscale_delay_s": replicas.upscale_delay_s,
        "downscale_delay_s": replicas.downscale_delay_s,
    }
    actor_options = {"num_cpus": judo.num_cpus, "num_gpus": judo.num_gpus}
    if judo.accelerator_type:
        actor_options["accelerator_type"] = judo.accelerator_type
    if judo.resources:
        actor_options["resources"] = dict(judo.resources)

    @serve.deployment(name=DEPLOYMENT_NAME)
    class JudoDeployment:
        def __init__(self, judo_config: dict, service_name: str, trace_file: str | None, bearer_token: str | None):
            self.replica = JudoReplica(judo_config, service_name, trace_file)
            self.bearer_token = bearer_token
            self.infer_batch.set_max_batch_size(judo.max_batch_size)
            self.infer_batch.set_batch_wait_timeout_s(judo.batch_wait_timeout_s)
            self.stall_armed_s = 0.0
            self.stalled_until = 0.0

        @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
        async def infer_batch(self, requests: list[JudoFrameRequest]) -> list[Verdict]:
            return await asyncio.to_thread(self.replica.infer, requests)

        async def infer(self, request: JudoFrameRequest) -> Verdict:
            if self.stall_armed_s:
                self.stalled_until, self.stall_armed_s = time.monotonic() + self.stall_armed_s, 0.0
            stall = self.stalled_until - time.monotonic()
            if stall > 0:
                await asyncio.sleep(stall)
            return await self.infer_batch(request)

        def inject_stall(self, seconds: float) -> str:
            """Fault injection for :mod:`pipelines.faults`: the next request to reach this replica wedges
            it for ``seconds`` (that request and every one arriving meanwhile hang until then), as a hung
            accelerator would. Armed until a request comes, so the stall always catches one however the
            router spreads the load. Returns the replica's actor name."""
            import ray

            self.stall_armed_s = seconds
            return ray.get_runtime_context().get_actor_name()

        async def __call__(self, http_request):
            from starlette.responses import JSONResponse

            if self.bearer_token:
                header = http_request.headers.get("authorization", "")
                if not hmac.compare_digest(header.encode(), f"Bearer {self.bearer_token}".encode()):
                    return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
            try:
                request = http_request_to_frame_request(await http_request.json())
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            verdict = await self.infer_batch(request)
            return JSONResponse(verdict.model_dump(mode="json"))

    trace_file = str(config.telemetry.trace_file) if config.telemetry.trace_file else None
    return JudoDeployment.options(
        autoscaling_config=autoscaling,
        max_queued_requests=judo.max_queued_requests,
        max_ongoing_requests=max(judo.max_batch_size * 2, 2),
        ray_actor_options=actor_options,
    ).bind(judo.model_dump(mode="json"), config.telemetry.service_name, trace_file, judo.http.bearer_token)


def app(args: dict):
    """Application builder for ``serve run pipelines.serve_app:app config=FILE``."""
    from pipelines.config import load_config

    return build_judo_deployment(load_config(args["config"]))
