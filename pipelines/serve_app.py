"""JUDO on Ray Serve: batched, autoscaled, GPU-pinnable replicas that turn suspect frames into verdicts.

Request: a :class:`SuspectFrame` from the frame path (a :class:`JudoFrameRequest` — frame metadata,
query pixels, the prefilter's anomaly map, score, threshold and defect hint — plus the paths of its k
normal references, which the replica reads from the bank folder itself), or a complete
:class:`JudoFrameRequest`. Response: a :class:`cluster.messages.Verdict`. The same deployment answers
ad-hoc HTTP questions about one image (``POST /`` with JSON), behind a bearer token when one is
configured.

:class:`JudoReplica` is the deployment; :func:`build_judo_deployment` applies the pipeline config's
options to it (or to a subclass, e.g. the fault harness's). ``serve run pipelines.serve_app:app
config=pipeline.yaml`` runs it from the pipeline config (see docs/pipeline.md for ``serve deploy``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hmac
import time
from pathlib import Path

import numpy as np
from ray import serve
from starlette.responses import JSONResponse

from cluster.messages import Answer, Defect, RLEMask, Verdict, canonical_defect_type
from cluster.telemetry import context_from_carrier, setup_tracing, trace_id_hex, tracer
from judo_model.imaging import decode_image
from judo_model.runtime.evidence import refine_region
from judo_model.runtime.output import COORDINATE_SCALE, choose_option, valid_boxes
from judo_model.runtime.prompting import Question
from pipelines.config import JudoSection, PipelineConfig, load_config
from pipelines.engines import JudoEngine, JudoFrameRequest, JudoResult, make_engine

#: The folder holding this checkout's packages (what a replica in another environment must import).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEPLOYMENT_NAME = "judo"
APP_NAME = "judo"


@dataclasses.dataclass
class SuspectFrame:
    """What the frame path sends a replica: the request without reference pixels, and the files
    (in the product's bank folder) the replica reads them from."""

    request: JudoFrameRequest
    reference_paths: list[str]


@functools.lru_cache(maxsize=256)
def reference_image(path: str) -> np.ndarray:
    """A reference image's pixels, read once per replica (a product has a few dozen references)."""
    image = decode_image(Path(path).read_bytes())
    image.setflags(write=False)  # shared by every request that shows it
    return image


def with_references(call: SuspectFrame) -> JudoFrameRequest:
    return dataclasses.replace(call.request, references=[reference_image(p) for p in call.reference_paths])


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


class JudoInference:
    """The replica's logic, independent of Serve so it can be tested and reused as is."""

    def __init__(self, judo_config: dict, service_name: str = "judo-inspect", trace_file: str | None = None,
                 engine: JudoEngine | None = None):
        setup_tracing(f"{service_name}.judo", trace_file=trace_file)
        self.config = JudoSection.model_validate(judo_config)
        self.engine = engine or make_engine(self.config)

    def infer(self, requests: list[JudoFrameRequest]) -> list[Verdict]:
        """One ``judo`` span per request, covering the batch's inference and the verdict."""
        started_ns = time.time_ns()
        spans = [tracer().start_span("judo", context=context_from_carrier(r.trace), start_time=started_ns)
                 for r in requests]
        try:
            results = self.engine.infer(requests)
            batch_ms = (time.time_ns() - started_ns) / 1e6
            return [self._verdict(request, result, span, len(requests), batch_ms)
                    for request, result, span in zip(requests, results, spans)]
        finally:
            for span in spans:
                span.end()

    async def ainfer(self, request: JudoFrameRequest) -> Verdict:
        """One request through an engine that batches concurrent requests itself (``engine.ainfer``: vLLM)."""
        started_ns = time.time_ns()
        span = tracer().start_span("judo", context=context_from_carrier(request.trace), start_time=started_ns)
        try:
            result = await self.engine.ainfer(request)
            return self._verdict(request, result, span, 1, (time.time_ns() - started_ns) / 1e6)
        finally:
            span.end()

    @staticmethod
    def _verdict(request: JudoFrameRequest, result: JudoResult, span, batch_size: int, batch_ms: float) -> Verdict:
        span.set_attribute("frame_id", request.frame_id)
        span.set_attribute("product", request.product)
        span.set_attribute("batch_size", batch_size)
        span.set_attribute("batch_ms", batch_ms)
        verdict = verdict_from_result(request, result)
        span.set_attribute("is_anomalous", verdict.is_anomalous)
        span.set_attribute("defect_type", verdict.defect.type or "" if verdict.defect else "")
        if verdict.parse_error:
            span.set_attribute("parse_error", verdict.parse_error)
        return verdict


def http_request_to_frame_request(payload: dict) -> JudoFrameRequest:
    """Ad-hoc HTTP question about one image: ``{"image": b64, "product": str, "references": [b64],
    "questions": [{"text": str, "options": {"A": str}}]}`` (optionally ``defect_hint``: a defect type, and
    ``defect_types``: the product's types, which the verdict's type is then decoded as one of)."""
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


@serve.deployment(name=DEPLOYMENT_NAME)
class JudoReplica:
    """The Serve deployment: batches requests into :class:`JudoInference`; answers HTTP too."""

    def __init__(self, judo_config: dict, service_name: str, trace_file: str | None, bearer_token: str | None):
        self.replica = JudoInference(judo_config, service_name, trace_file)
        self.bearer_token = bearer_token
        self.infer_batch.set_max_batch_size(self.replica.config.max_batch_size)
        self.infer_batch.set_batch_wait_timeout_s(self.replica.config.batch_wait_timeout_s)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def infer_batch(self, requests: list[JudoFrameRequest]) -> list[Verdict]:
        return await asyncio.to_thread(self.replica.infer, requests)

    async def infer(self, request: SuspectFrame | JudoFrameRequest) -> Verdict:
        if isinstance(request, SuspectFrame):
            request = await asyncio.to_thread(with_references, request)
        return await self.answer(request)

    async def answer(self, request: JudoFrameRequest) -> Verdict:
        """Through ``@serve.batch``, or straight to an engine that schedules concurrent requests (vLLM)."""
        if hasattr(self.replica.engine, "ainfer"):
            return await self.replica.ainfer(request)
        return await self.infer_batch(request)

    async def __call__(self, http_request):
        if self.bearer_token:
            header = http_request.headers.get("authorization", "")
            if not hmac.compare_digest(header.encode(), f"Bearer {self.bearer_token}".encode()):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            request = http_request_to_frame_request(await http_request.json())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        verdict = await self.answer(request)
        return JSONResponse(verdict.model_dump(mode="json"))


def deployment_options(judo: JudoSection) -> dict:
    """``Deployment.options(...)`` from the config's ``judo`` section: autoscaling, queue limits, resources."""
    replicas = judo.replicas
    autoscaling = {
        "min_replicas": replicas.min,
        "max_replicas": replicas.max,
        "initial_replicas": replicas.initial if replicas.initial is not None else max(replicas.min, 1),
        "target_ongoing_requests": replicas.target_ongoing_requests,
        "upscale_delay_s": replicas.upscale_delay_s,
        "downscale_delay_s": replicas.downscale_delay_s,
    }
    for key in ("metrics_interval_s", "look_back_period_s"):  # unset: Serve's defaults
        if getattr(replicas, key) is not None:
            autoscaling[key] = getattr(replicas, key)
    actor_options = {"num_cpus": judo.num_cpus, "num_gpus": judo.num_gpus}
    if judo.accelerator_type:
        actor_options["accelerator_type"] = judo.accelerator_type
    if judo.resources:
        actor_options["resources"] = dict(judo.resources)
    if judo.engine == "vllm" and judo.vllm.python:  # the replica runs in the vLLM engine environment
        # with this checkout's code first on its path, not whichever checkout that environment was installed from
        actor_options["runtime_env"] = {"py_executable": str(judo.vllm.python.expanduser()),
                                        "env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}}
    return {"autoscaling_config": autoscaling, "max_queued_requests": judo.max_queued_requests,
            "max_ongoing_requests": max(judo.max_batch_size * 2, 2), "ray_actor_options": actor_options}


def build_judo_deployment(config: PipelineConfig, deployment=JudoReplica):
    """The Serve application for ``config.judo``: ``deployment`` (:class:`JudoReplica` or a subclass
    deployment of the same constructor) with the config's options, bound to its arguments."""
    judo = config.judo
    trace_file = str(config.telemetry.trace_file) if config.telemetry.trace_file else None
    return deployment.options(**deployment_options(judo)).bind(
        judo.model_dump(mode="json"), config.telemetry.service_name, trace_file, judo.http.bearer_token)


def app(args: dict):
    """Application builder for ``serve run pipelines.serve_app:app config=FILE`` and ``serve deploy``."""
    return build_judo_deployment(load_config(args["config"]))
