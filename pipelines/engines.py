"""JUDO inference engines behind one interface: transformers (CPU or GPU) and vLLM (GPU, or its CPU build).

Both show a checkpoint exactly what it was trained on (:func:`prompt_inputs`: the images at the
training size, the evidence image rendered from the prefilter's anomaly map as in training, the
reference only if training used one), build the prompt with :func:`judo_model.runtime.prompting.build_prompt`
and read the output with :func:`judo_model.runtime.output.parse_output`, so a checkpoint answers the same
way on a laptop and on a GPU pool. The engine is chosen by ``judo.engine`` in the pipeline config.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from judo_model.data.knowledge import product_title
from judo_model.processing import load_processor
from judo_model.runtime.evidence import EvidenceInputs, evidence_inputs
from judo_model.runtime.inference import JudoModel
from judo_model.runtime.inputs import prompt_options_of, shown
from judo_model.runtime.output import ParsedOutput, parse_output
from judo_model.runtime.prompting import build_prompt, prompt_text
from judo_model.runtime.vllm_engine import AsyncVllm
from pipelines.judo_request import JudoFrameRequest


def prompt_inputs(request: JudoFrameRequest, options) -> dict:
    """``build_prompt`` keyword arguments showing the request as the checkpoint saw its training
    prompts (``options`` from :func:`judo_model.runtime.inputs.prompt_options_of`)."""
    reference = shown(request.references[0]) if options.reference and request.references else None
    evidence = EvidenceInputs()
    if options.evidence_route and request.anomaly_map is not None:
        evidence = evidence_inputs(request.query, request.anomaly_map, request.threshold, options.evidence_route,
                                   request.defect_hint, product_title(request.product) if options.product_note else None)
    return dict(reference_image=reference, query_image=shown(request.query), evidence_image=evidence.image,
                evidence_note=evidence.note, questions=request.questions)


@dataclass
class JudoResult:
    raw_text: str
    parsed: ParsedOutput
    model_version: str
    latency_ms: float


class JudoEngine(Protocol):
    model_version: str

    def infer(self, requests: list[JudoFrameRequest]) -> list[JudoResult]: ...


def model_version_of(checkpoint: Path) -> str:
    """``<folder name>@<short hash of the weights' metadata>``: names what answered a frame."""
    weights = sorted(checkpoint.glob("*.safetensors")) + sorted(checkpoint.glob("config.json"))
    digest = hashlib.sha256()
    for path in weights:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 16))
    return f"{checkpoint.name}@{digest.hexdigest()[:10]}"


class TransformersEngine:
    """The default engine: transformers generate under inference mode, a whole batch in one call
    (:meth:`judo_model.runtime.inference.JudoModel.generate_batch`: left-padded rows, each with its
    own images, guided slots and end of turn)."""

    def __init__(self, checkpoint: Path, device: str = "cpu", max_new_tokens: int = 128, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.judo = JudoModel.load(checkpoint, device=device)
        self.options = prompt_options_of(checkpoint)
        self.max_new_tokens = max_new_tokens
        self.model_version = model_version_of(Path(checkpoint))
        self.lock = threading.Lock()

    def infer(self, requests: list[JudoFrameRequest]) -> list[JudoResult]:
        """One ``generate`` for the batch; each result's latency is the batch's inference time."""
        started = time.perf_counter()
        prompts = [build_prompt(**prompt_inputs(request, self.options)) for request in requests]
        with self.lock:  # the model keeps per-call state (Qwen2.5-VL's rope deltas): one generate at a time
            outputs = self.judo.generate_batch(prompts, self.max_new_tokens,
                                               defect_types=[request.defect_types for request in requests])
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [JudoResult(raw, parsed, self.model_version, elapsed_ms) for raw, parsed in outputs]


class VllmEngine:
    """vLLM's async engine (:class:`judo_model.runtime.vllm_engine.AsyncVllm`): each request is its own
    generation and vLLM's scheduler batches those in flight; same prompt and parser as
    :class:`TransformersEngine`, the verdict's type decoded among ``defect_types`` by the same
    ChoiceConstraint (inside vLLM). Runs in the engine environment (docs/vllm.md), on GPUs or vLLM's CPU build."""

    def __init__(self, checkpoint: Path, **vllm_options):
        self.processor = load_processor(checkpoint)
        self.options = prompt_options_of(checkpoint)
        self.core = AsyncVllm(checkpoint, **vllm_options)
        self.model_version = model_version_of(Path(checkpoint))

    async def ainfer(self, request: JudoFrameRequest) -> JudoResult:
        """One request's result; awaitable from any event loop (the Serve replica's)."""
        started = time.perf_counter()
        prompt = build_prompt(**prompt_inputs(request, self.options))
        raw = await self.core.generate(prompt_text(self.processor, prompt), list(prompt.images),
                                       defect_types=request.defect_types)
        return JudoResult(raw, parse_output(raw), self.model_version, (time.perf_counter() - started) * 1000)

    def infer(self, requests: list[JudoFrameRequest]) -> list[JudoResult]:
        """All requests at once (vLLM batches them); for synchronous callers."""
        async def all_of():
            return await asyncio.gather(*(self.ainfer(request) for request in requests))
        return self.core.run(all_of())

    def close(self) -> None:
        """Stop vLLM's engine core (also done at interpreter exit)."""
        self.core.shutdown()


def make_engine(judo_config) -> JudoEngine:
    """The engine named by a :class:`pipelines.config.JudoSection`."""
    checkpoint = Path(judo_config.checkpoint)
    if not (checkpoint / "config.json").exists():
        raise FileNotFoundError(f"JUDO checkpoint {checkpoint} has no config.json (train one with `judo train`)")
    if judo_config.engine == "vllm":
        return VllmEngine(checkpoint, device=judo_config.device, max_new_tokens=judo_config.max_new_tokens,
                          # every request a replica may hold at once (Serve's max_ongoing_requests) runs in one batch
                          max_num_seqs=max(judo_config.max_batch_size * 2, 2), **judo_config.vllm.engine_options())
    return TransformersEngine(checkpoint, device=judo_config.device, max_new_tokens=judo_config.max_new_tokens,
                              torch_threads=judo_config.torch_threads)
