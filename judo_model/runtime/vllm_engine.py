"""vLLM's async engine (``AsyncLLM``) for JUDO: concurrent prompts batched by vLLM's own scheduler.

:class:`AsyncVllm` owns one ``AsyncLLM`` and the event loop it runs on (a daemon thread), so it
answers both async callers (the Serve replica: each request awaits its own generation, and vLLM
batches whatever is in flight) and plain synchronous ones (benchmarks, tests, ``judo eval mmad
--engine vllm`` through :class:`VllmJudo`). The contract's closed slots (the verdict's type, MMAD
answers) are decoded by the transformers engine's own
:class:`judo_model.runtime.constraints.ChoiceConstraint`, run inside vLLM as a logits processor
(:mod:`judo_model.runtime.vllm_slots`): vLLM's structured outputs constrain text, not tokens, and the
model then spells a choice with other tokens and writes something else after it (docs/vllm.md, measured).

vLLM is imported when an engine starts, never at import time: it lives in the engine environment
(``scripts/vllm_env.sh``, docs/vllm.md), not in the project venv.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from judo_model.processing import load_processor
from judo_model.runtime.inference import DEFAULT_MAX_NEW_TOKENS
from judo_model.runtime.inputs import IMAGE_SIDE
from judo_model.runtime.output import ParsedOutput, parse_output
from judo_model.runtime.prompting import ImageLike, build_prompt, prompt_text
from judo_model.runtime.questions import Question

#: The platforms vLLM builds run on, as :attr:`pipelines.config.JudoSection.device` names them.
PLATFORM_DEVICES = {"cpu": "cpu", "cuda": "cuda", "rocm": "cuda"}
#: The logits processor that closes the contract's slots, loaded by name in vLLM's engine core.
SLOTS_PROCESSOR = "judo_model.runtime.vllm_slots:ChoiceSlots"


def slot_arguments(defect_types: Sequence[str] | None = None,
                   answer_options: Sequence[str] | None = None) -> dict | None:
    """``SamplingParams.extra_args`` asking :class:`judo_model.runtime.vllm_slots.ChoiceSlots` for the
    closed slots (the keyword arguments of :meth:`ChoiceConstraint.for_output`), or None: decode freely."""
    slots = {key: list(values) for key, values in (("defect_types", defect_types),
                                                    ("answer_options", answer_options)) if values}
    return {"judo_slots": slots} if slots else None


def platform_device() -> str:
    """The device the installed vLLM build runs on (``cpu`` for vLLM's CPU build, else ``cuda``)."""
    from vllm.platforms import current_platform  # the engine environment only
    return PLATFORM_DEVICES.get(current_platform.device_type, current_platform.device_type)


def engine_arguments(checkpoint: Path, *, device: str = "cuda", max_model_len: int = 4096,
                     gpu_memory_utilization: float = 0.85, max_pixels_per_image: int = 448 * 448,
                     limit_images_per_prompt: int = 3, enable_prefix_caching: bool = False, max_num_seqs: int = 16,
                     dtype: str = "float32", cpu_kvcache_gib: float = 1.0, **scheduler) -> dict:
    """vLLM engine arguments (``AsyncEngineArgs`` / ``LLM`` keywords) for a JUDO checkpoint: several
    images per prompt under a pixel cap, the slots' logits processor, float32 as the transformers
    engine. ``scheduler`` passes further arguments (e.g. ``max_num_batched_tokens``) unchanged."""
    if max_pixels_per_image < IMAGE_SIDE * IMAGE_SIDE:
        raise ValueError(f"max_pixels_per_image {max_pixels_per_image} is under the training size "
                         f"({IMAGE_SIDE}x{IMAGE_SIDE} = {IMAGE_SIDE * IMAGE_SIDE} px)")
    if device == "cpu":
        # vLLM's CPU build sizes its KV cache from this variable (GiB), not from gpu_memory_utilization
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cpu_kvcache_gib))))
    return dict(model=str(checkpoint), max_model_len=max_model_len, max_num_seqs=max_num_seqs, dtype=dtype,
                limit_mm_per_prompt={"image": limit_images_per_prompt},
                mm_processor_kwargs={"max_pixels": max_pixels_per_image},
                enable_prefix_caching=enable_prefix_caching, disable_log_stats=True,
                logits_processors=[SLOTS_PROCESSOR], enforce_eager=device == "cpu",
                **({"gpu_memory_utilization": gpu_memory_utilization} if device != "cpu" else {}), **scheduler)


class AsyncVllm:
    """One ``AsyncLLM`` on its own event loop thread, greedy, several images per prompt.

    ``max_pixels_per_image`` caps an image's pixels in vLLM's processor (the engine is shown images
    at the training size, :data:`judo_model.runtime.inputs.IMAGE_SIDE`, so the cap only bounds what
    an unexpected caller could send). Prefix caching stays off by default: prompts with the same
    text but different images must not share cached prefixes. Engine arguments:
    :func:`engine_arguments`.
    """

    def __init__(self, checkpoint: Path, *, device: str = "cuda", max_new_tokens: int = 128, **engine_options):
        arguments = engine_arguments(checkpoint, device=device, **engine_options)
        try:
            from vllm import SamplingParams  # the engine environment only (scripts/vllm_env.sh)
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError(f"vLLM is not installed in this Python ({exc}); the vllm engine runs in the "
                               "engine environment made by scripts/vllm_env.sh (docs/vllm.md)") from None
        platform = platform_device()
        if platform != device:
            raise RuntimeError(f"judo.device is {device!r} but this vLLM build runs on {platform!r}")
        self._sampling = SamplingParams
        self.max_new_tokens = max_new_tokens
        self._ids = itertools.count()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(**arguments)

        async def start():
            return AsyncLLM.from_engine_args(args)  # on the engine loop: its output handler runs there

        self.engine = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        atexit.register(self.shutdown)  # a caller that never shuts down: stop the core before the interpreter

    def sampling(self, defect_types: Sequence[str] | None = None, answer_options: Sequence[str] | None = None,
                 max_new_tokens: int | None = None):
        """Greedy sampling parameters, with the closed slots (if any) for :class:`ChoiceSlots`."""
        return self._sampling(temperature=0.0, max_tokens=max_new_tokens or self.max_new_tokens,
                              extra_args=slot_arguments(defect_types, answer_options))

    async def _generate(self, text: str, images: list, sampling) -> str:
        prompt = {"prompt": text, "multi_modal_data": {"image": images}} if images else {"prompt": text}
        final = None
        async for output in self.engine.generate(prompt, sampling, request_id=f"judo-{next(self._ids)}"):
            final = output
        return final.outputs[0].text

    async def generate(self, text: str, images: list, defect_types: Sequence[str] | None = None,
                       answer_options: Sequence[str] | None = None, max_new_tokens: int | None = None) -> str:
        """The model's text for one chat-formatted prompt and its images; awaitable from any loop."""
        future = asyncio.run_coroutine_threadsafe(
            self._generate(text, images, self.sampling(defect_types, answer_options, max_new_tokens)), self.loop)
        return await asyncio.wrap_future(future)

    def run(self, coroutine):
        """Run ``coroutine`` on the engine loop and wait for it (for synchronous callers)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def shutdown(self) -> None:
        """Stop the engine core process and the loop thread (once; again is a no-op)."""
        if self.engine is None:
            return
        self.engine.shutdown()
        self.engine = None  # released now, not by AsyncLLM.__del__ at interpreter exit (which then fails)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


class VllmJudo:
    """:meth:`judo_model.runtime.inference.JudoModel.generate` on vLLM: the same prompt (``build_prompt``,
    the processor's chat template, ``prefix`` taken as already written), the same closed slots and the
    same parser, so whatever asks a :class:`JudoModel` (the MMAD answerer) can ask vLLM instead.
    Option likelihoods (``score_options``) stay with the transformers engine."""

    def __init__(self, checkpoint: str | Path, **vllm_options):
        self.processor = load_processor(checkpoint)
        options = {"device": platform_device(), "dtype": "float32", **vllm_options}
        self.core = AsyncVllm(Path(checkpoint), **options)

    def generate(self, reference_image: ImageLike | None, query_image: ImageLike,
                 evidence_image: ImageLike | None = None, questions: Sequence[Question] | None = None,
                 domain_knowledge: str | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 evidence_note: str | None = None, defect_types: Sequence[str] | None = None,
                 answer_options: Sequence[str] | None = None, prefix: str = "") -> tuple[str, ParsedOutput]:
        """Greedy-decode one answer; returns the raw text (starting with ``prefix``) and its parse."""
        prompt = build_prompt(reference_image=reference_image, query_image=query_image,
                              evidence_image=evidence_image, evidence_note=evidence_note, questions=questions,
                              domain_knowledge=domain_knowledge)
        text = self.core.run(self.core.generate(prompt_text(self.processor, prompt) + prefix, list(prompt.images),
                                                defect_types=defect_types, answer_options=answer_options,
                                                max_new_tokens=max_new_tokens))
        raw = prefix + text
        return raw, parse_output(raw)

    def close(self) -> None:
        """Stop vLLM's engine core (also done at interpreter exit)."""
        self.core.shutdown()
