"""JUDO inference engines behind one interface: transformers (CPU or GPU) and vLLM (GPU).

Both show a checkpoint exactly what it was trained on (:func:`prompt_inputs`: the images at the
training size, the evidence image rendered from the prefilter's anomaly map as in training, the
reference only if training used one), build the prompt with :func:`judo_model.runtime.prompting.build_prompt`
and read the output with :func:`judo_model.runtime.output.parse_output`, so a checkpoint answers the same
way on a laptop and on a GPU pool. The engine is chosen by ``judo.engine`` in the pipeline config.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from judo_model.data.knowledge import product_title
from judo_model.processing import load_processor
from judo_model.runtime.evidence import EvidenceInputs, evidence_inputs
from judo_model.runtime.inference import JudoModel
from judo_model.runtime.inputs import prompt_options_of, shown
from judo_model.runtime.output import ParsedOutput, parse_output
from judo_model.runtime.prompting import Question, build_prompt, prompt_text


@dataclass
class JudoFrameRequest:
    """Everything a replica needs to give one suspect frame its verdict: the frame, its
    juxtaposition context (k normal references, the prefilter's anomaly map and threshold, and the
    labelled defect type the anomaly looks most like, where the product has a defect library)."""

    frame_id: str
    camera_id: str
    line_id: str
    product: str
    captured_at: object
    query: np.ndarray
    references: list[np.ndarray]
    anomaly_score: float
    threshold: float
    anomaly_map: np.ndarray | None = None
    defect_hint: str | None = None
    #: the product's known defect types: the verdict's type is decoded as one of them (None: free)
    defect_types: list[str] | None = None
    questions: list[Question] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    trace: dict[str, str] = field(default_factory=dict)


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
    """The default engine: transformers generate, one prompt at a time, under inference mode."""

    def __init__(self, checkpoint: Path, device: str = "cpu", max_new_tokens: int = 128, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.judo = JudoModel.load(checkpoint, device=device)
        self.options = prompt_options_of(checkpoint)
        self.max_new_tokens = max_new_tokens
        self.model_version = model_version_of(Path(checkpoint))

    def infer(self, requests: list[JudoFrameRequest]) -> list[JudoResult]:
        results = []
        for request in requests:
            started = time.perf_counter()
            raw, parsed = self.judo.generate(**prompt_inputs(request, self.options),
                                             max_new_tokens=self.max_new_tokens, defect_types=request.defect_types)
            results.append(JudoResult(raw, parsed, self.model_version, (time.perf_counter() - started) * 1000))
        return results


class VllmEngine:
    """vLLM on GPUs: several images per prompt, a pixel cap per image, prefix caching off.

    The verdict's type is decoded freely here: ``defect_types`` is applied by the transformers
    engine only (vLLM's structured outputs could carry it; not wired, untested without a GPU).

    Prefix caching stays off by default because prompts with the same text but different
    images can share cached prefixes wrongly (a known vLLM issue for multimodal prompts).
    """

    def __init__(self, checkpoint: Path, *, max_new_tokens: int, max_model_len: int,
                 gpu_memory_utilization: float, max_pixels_per_image: int, limit_images_per_prompt: int,
                 enable_prefix_caching: bool = False):
        from vllm import LLM, SamplingParams  # optional dependency (GPU hosts only)

        self.processor = load_processor(checkpoint)
        self.options = prompt_options_of(checkpoint)
        self.llm = LLM(
            model=str(checkpoint),
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            limit_mm_per_prompt={"image": limit_images_per_prompt},
            mm_processor_kwargs={"max_pixels": max_pixels_per_image},
            enable_prefix_caching=enable_prefix_caching,
        )
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        self.model_version = model_version_of(Path(checkpoint))

    def infer(self, requests: list[JudoFrameRequest]) -> list[JudoResult]:
        inputs = []
        for request in requests:
            prompt = build_prompt(**prompt_inputs(request, self.options))
            inputs.append({"prompt": prompt_text(self.processor, prompt),
                           "multi_modal_data": {"image": list(prompt.images)}})
        started = time.perf_counter()
        outputs = self.llm.generate(inputs, self.sampling, use_tqdm=False)
        per_request = (time.perf_counter() - started) * 1000 / max(len(requests), 1)
        return [
            JudoResult(out.outputs[0].text, parse_output(out.outputs[0].text), self.model_version, per_request)
            for out in outputs
        ]


def make_engine(judo_config) -> JudoEngine:
    """The engine named by a :class:`pipelines.config.JudoSection`."""
    checkpoint = Path(judo_config.checkpoint)
    if not (checkpoint / "config.json").exists():
        raise FileNotFoundError(f"JUDO checkpoint {checkpoint} has no config.json (train one with `judo train`)")
    if judo_config.engine == "vllm":
        v = judo_config.vllm
        return VllmEngine(checkpoint, max_new_tokens=judo_config.max_new_tokens, max_model_len=v.max_model_len,
                          gpu_memory_utilization=v.gpu_memory_utilization,
                          max_pixels_per_image=v.max_pixels_per_image,
                          limit_images_per_prompt=v.limit_images_per_prompt,
                          enable_prefix_caching=v.enable_prefix_caching)
    return TransformersEngine(checkpoint, device=judo_config.device, max_new_tokens=judo_config.max_new_tokens,
                              torch_threads=judo_config.torch_threads)
