"""JUDO on Ray Serve: batched, autoscaled, GPU-pinnable replicas that turn suspect frames into verdicts.

Request: a :class:`SuspectFrame` from the frame path (a :class:`JudoFrameRequest` — frame metadata,
query pixels, the prefilter's anomaly map, score, threshold and defect hint — plus the paths of its k
normal references, which the replica reads from the bank folder itself), or a complete
:class:`JudoFrameRequest`. Response: a :class:`cluster.messages.Verdict`. The same deployment answers
ad-hoc HTTP questions about one image (``POST /judo`` with JSON), only with the configured bearer
token and within its size limits (:mod:`pipelines.http_api`).

:class:`JudoReplica` is the deployment; :func:`build_judo_deployment` applies the pipeline config's
options to it (or to a subclass, e.g. the fault harness's). ``serve run pipelines.serve_app:app
config=pipeline.yaml`` runs it from the pipeline config (see docs/pipeline.md for ``serve deploy``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from pathlib import Path

import numpy as np
from ray import serve
from starlette.responses import JSONResponse

from cluster.messages import Answer, Defect, RLEMask, Verdict
from cluster.telemetry import context_from_carrier, setup_tracing, trace_id_hex, tracer
from judo_model.imaging import decode_image
from judo_model.runtime.clearing import ClearingRule
from judo_model.runtime.evidence import hottest_boxes, refine_region
from judo_model.runtime.output import COORDINATE_SCALE, choose_option, valid_boxes
from judo_model.runtime.vocabulary import UNKNOWN_TYPE, constrain_type
from pipelines.clearing import ProductPolicies, ProductPolicy, decide
from pipelines.config import JudoSection, PipelineConfig, load_config
from pipelines.engines import JudoEngine, JudoResult, make_engine
from pipelines.http_api import (  # http_request_to_frame_request: re-exported, callers import it from here
    HttpRefusal,
    frame_request_from_http,
    http_request_to_frame_request,
    refusal_response,
)
from pipelines.judo_request import JudoFrameRequest, SuspectFrame

#: The folder holding this checkout's packages (what a replica in another environment must import).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEPLOYMENT_NAME = "judo"
APP_NAME = "judo"


@functools.lru_cache(maxsize=256)
def reference_image(path: str) -> np.ndarray:
    """A reference image's pixels, read once per replica (a product has a few dozen references)."""
    image = decode_image(Path(path).read_bytes())
    image.setflags(write=False)  # shared by every request that shows it
    return image


def with_references(call: SuspectFrame) -> JudoFrameRequest:
    return dataclasses.replace(call.request, references=[reference_image(p) for p in call.reference_paths])


def verdict_from_result(request: JudoFrameRequest, result: JudoResult, policy: ProductPolicy | None = None) -> Verdict:
    """Combine the prefilter's evidence and JUDO's answer into the frame's verdict, under the
    product's policy (:func:`pipelines.clearing.decide`; default: JUDO may not clear).

    A flagged frame JUDO says is normal stays flagged unless the product's clearing was measured
    reliable; JUDO's own yes/no is kept in ``judo_is_anomalous`` and ``decided_by`` names the rule.
    The type is one of the product's own (library or domain knowledge), else ``unknown``. Boxes that
    break the contract (corners out of order, outside 0-1000) are dropped, not repaired; the verdict
    keeps the parser's error, so a malformed output still gives a verdict.
    """
    policy = policy or ProductPolicy(request.product)
    parsed = result.parsed
    height, width = request.query.shape[:2]
    judo_says = bool(parsed.defect) if parsed.defect is not None else None
    is_anomalous, decided_by = decide(request.anomaly_score > request.threshold, judo_says, policy.may_clear)
    defect = None
    if is_anomalous:
        boxes = valid_boxes(parsed.boxes) if judo_says is not False else []
        if not boxes and request.anomaly_map is not None:  # the flag stands on the prefilter's region
            boxes = hottest_boxes(request.anomaly_map, request.threshold)
        mask = refine_region(boxes, height, width, request.anomaly_map)
        if judo_says:
            defect_type, description = constrain_type(parsed.defect_type, policy.vocabulary(request.defect_types))
        else:
            defect_type, description = UNKNOWN_TYPE, KEPT_FLAG_NOTES[decided_by]
        defect = Defect(
            type=defect_type,
            boxes=[[min(max(c / COORDINATE_SCALE, 0.0), 1.0) for c in box] for box in boxes],
            mask=RLEMask.encode(mask) if mask.any() else None,
            description=description,
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
        decided_by=decided_by, judo_is_anomalous=judo_says,
    )


#: the description of a flagged frame JUDO did not confirm, by the rule that kept the flag
KEPT_FLAG_NOTES = {
    "prefilter-flag-kept": "flagged by the prefilter; JUDO saw no defect, but its clearing is not measured "
                           "reliable for this product, so the flag stands",
    "prefilter-judo-unreadable": "flagged by the prefilter; JUDO's answer had no readable verdict",
    "prefilter": "JUDO's answer had no readable verdict",
}


def with_vocabulary(request: JudoFrameRequest, policy: ProductPolicy) -> JudoFrameRequest:
    """The request with its type slot limited to the product's own types (``unknown`` without any)."""
    return dataclasses.replace(request, defect_types=policy.choices(request.defect_types))


class JudoInference:
    """The replica's logic, independent of Serve so it can be tested and reused as is."""

    def __init__(self, judo_config: dict, service_name: str = "judo-inspect", trace_file: str | None = None,
                 engine: JudoEngine | None = None, products: dict[str, dict] | None = None):
        setup_tracing(f"{service_name}.judo", trace_file=trace_file)
        self.config = JudoSection.model_validate(judo_config)
        self.engine = engine or make_engine(self.config)
        rule = ClearingRule(**self.config.clearing.model_dump())
        #: per product: may JUDO clear a flagged frame, and which types may it name (pipelines/clearing.py)
        self.policies = ProductPolicies.load(products, rule, getattr(self.engine, "model_version", None))

    def infer(self, requests: list[JudoFrameRequest]) -> list[Verdict]:
        """One ``judo`` span per request, covering the batch's inference and the verdict."""
        started_ns = time.time_ns()
        spans = [tracer().start_span("judo", context=context_from_carrier(r.trace), start_time=started_ns)
                 for r in requests]
        try:
            results = self.engine.infer([with_vocabulary(r, self.policies.of(r.product)) for r in requests])
            batch_ms = (time.time_ns() - started_ns) / 1e6
            return [self._verdict(request, result, span, len(requests), batch_ms, self.policies.of(request.product))
                    for request, result, span in zip(requests, results, spans)]
        finally:
            for span in spans:
                span.end()

    async def ainfer(self, request: JudoFrameRequest) -> Verdict:
        """One request through an engine that batches concurrent requests itself (``engine.ainfer``: vLLM)."""
        started_ns = time.time_ns()
        span = tracer().start_span("judo", context=context_from_carrier(request.trace), start_time=started_ns)
        try:
            result = await self.engine.ainfer(with_vocabulary(request, self.policies.of(request.product)))
            return self._verdict(request, result, span, 1, (time.time_ns() - started_ns) / 1e6,
                                 self.policies.of(request.product))
        finally:
            span.end()

    @staticmethod
    def _verdict(request: JudoFrameRequest, result: JudoResult, span, batch_size: int, batch_ms: float,
                 policy: ProductPolicy | None = None) -> Verdict:
        span.set_attribute("frame_id", request.frame_id)
        span.set_attribute("product", request.product)
        span.set_attribute("batch_size", batch_size)
        span.set_attribute("batch_ms", batch_ms)
        verdict = verdict_from_result(request, result, policy)
        span.set_attribute("is_anomalous", verdict.is_anomalous)
        span.set_attribute("decided_by", verdict.decided_by or "")
        span.set_attribute("defect_type", verdict.defect.type or "" if verdict.defect else "")
        if verdict.parse_error:
            span.set_attribute("parse_error", verdict.parse_error)
        return verdict


@serve.deployment(name=DEPLOYMENT_NAME)
class JudoReplica:
    """The Serve deployment: batches requests into :class:`JudoInference`; answers HTTP too."""

    def __init__(self, judo_config: dict, service_name: str, trace_file: str | None, bearer_token: str | None,
                 products: dict[str, dict] | None = None):
        self.replica = JudoInference(judo_config, service_name, trace_file, products=products)
        # the token named by judo.http (env var or file) is read here, in the replica, not shipped as an argument
        self.bearer_token = bearer_token or self.replica.config.http.token()
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
        """``POST /judo``: refused with a 4xx before any inference unless authenticated and well formed
        (:mod:`pipelines.http_api`)."""
        try:
            request = await frame_request_from_http(http_request, self.replica.config.http, self.bearer_token)
        except HttpRefusal as refusal:
            return refusal_response(refusal)
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
        judo.model_dump(mode="json"), config.telemetry.service_name, trace_file, judo.http.bearer_token,
        products=products_for_replicas(config))


def products_for_replicas(config: PipelineConfig) -> dict[str, dict]:
    """What a replica loads each product's policy from: its bank folder and domain-knowledge file."""
    return {name: {"bank": str(p.bank), "domain_knowledge": str(p.domain_knowledge) if p.domain_knowledge else None}
            for name, p in config.products.items()}


def app(args: dict):
    """Application builder for ``serve run pipelines.serve_app:app config=FILE`` and ``serve deploy``."""
    return build_judo_deployment(load_config(args["config"]))
