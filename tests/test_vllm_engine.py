"""The vLLM engine: its requests name the closed slots the transformers engine's ChoiceConstraint
closes (inside vLLM's engine core), its config and Serve options, and (where the engine environment exists, made by
``make vllm-env``) parity with the transformers engine and a Serve replica running on vLLM.

The vLLM tests run vLLM in the engine environment's Python (``~/.cache/judo-inspect/vllm-venv``, or
``JUDO_VLLM_PYTHON``); without it they skip and say so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from ray import serve

from benchmarks.judo_requests import sample_requests
from benchmarks.vllm_parity import VLLM_PYTHON, compare, transformers_texts, vllm_texts, vllm_unavailable
from cluster.ray_runtime import start_ray, stop_ray
from judo_model.processing import load_processor
from judo_model.runtime.constraints import ChoiceConstraint
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.config import parse_config
from pipelines.serve_app import APP_NAME, build_judo_deployment, deployment_options
from pipelines.vllm_engine import slot_arguments

TYPES = ["hole", "crack", "scratch (deep)"]
OPTIONS = ["Yes", "Top left"]
CONFIG = {"lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
          "products": {"bottle": {"bank": "banks/bottle"}}}
WHY_SKIPPED = vllm_unavailable()
needs_vllm = pytest.mark.skipif(WHY_SKIPPED is not None, reason=f"vLLM engine environment: {WHY_SKIPPED}")


def test_requests_name_their_closed_slots_for_the_engine_core():
    assert slot_arguments(TYPES, None) == {"judo_slots": {"defect_types": TYPES}}
    assert slot_arguments(TYPES, OPTIONS) == {"judo_slots": {"defect_types": TYPES, "answer_options": OPTIONS}}
    assert slot_arguments(None, None) is None and slot_arguments([], []) is None
    # what the engine core builds from them: the transformers engine's own constraint
    tokenizer = load_processor(SHIPPED_CHECKPOINT).tokenizer
    constraint = ChoiceConstraint.for_output(tokenizer, 0, **slot_arguments(TYPES, OPTIONS)["judo_slots"])
    assert [tokenizer.decode(opening) for opening, _ in constraint.slots] == ["<defect>yes:", "<answer>"]


def test_vllm_on_cpu_needs_no_gpu_and_its_replica_runs_in_the_engine_environment():
    config = parse_config({**CONFIG, "judo": {"checkpoint": "c", "engine": "vllm",
                                              "vllm": {"python": "~/venv/bin/python"}}})
    options = deployment_options(config.judo)["ray_actor_options"]
    assert options["num_gpus"] == 0
    assert options["runtime_env"] == {"py_executable": str(Path("~/venv/bin/python").expanduser()),
                                      "env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}}
    transformers = parse_config({**CONFIG, "judo": {"checkpoint": "c", "vllm": {"python": "/x/bin/python"}}})
    assert "runtime_env" not in deployment_options(transformers.judo)["ray_actor_options"]
    assert set(config.judo.vllm.engine_options()) == {"max_model_len", "gpu_memory_utilization", "cpu_kvcache_gib",
                                                      "dtype", "max_pixels_per_image", "limit_images_per_prompt",
                                                      "enable_prefix_caching"}


@needs_vllm
def test_vllm_engine_gives_the_transformers_engines_verdicts():
    """A smaller set of ``benchmarks/vllm_parity.py``: greedy, the same requests, the same verdicts."""
    requests = sample_requests(8, seed=1)
    reference = transformers_texts(requests, SHIPPED_CHECKPOINT, 128)
    candidate = vllm_texts(requests, SHIPPED_CHECKPOINT, 128)
    result = compare(requests, reference, candidate)
    assert result["verdict_agreement"] == 1.0, result["differing"]  # 40 of 40 in docs/vllm_parity.json
    assert all(text.strip() for text in candidate)


@needs_vllm
def test_serve_replica_answers_on_vllm_in_the_engine_environment():
    """The Serve deployment with ``judo.engine: vllm`` on CPU: its replica runs in the engine
    environment (runtime_env py_executable), and concurrent requests each get their verdict."""
    config = parse_config({**CONFIG, "judo": {
        "checkpoint": str(SHIPPED_CHECKPOINT), "engine": "vllm", "max_new_tokens": 64, "num_cpus": 0,
        "vllm": {"python": str(VLLM_PYTHON)}}, "telemetry": {"trace_file": None}})
    # types no checkpoint has seen: a typed verdict can only name them if the slot is closed inside vLLM
    requests = [dataclasses.replace(r, defect_types=["glitter", "sparkle"]) for r in sample_requests(4, seed=2)]
    started = start_ray(num_cpus=2)
    try:
        handle = serve.run(build_judo_deployment(config), name=APP_NAME, route_prefix=None)
        responses = [handle.infer.remote(r) for r in requests]  # in flight together: vLLM batches them
        verdicts = [response.result(timeout_s=600) for response in responses]
        assert [v.frame_id for v in verdicts] == [r.frame_id for r in requests]
        assert all(v.stage == "judo" and v.model_version.startswith("judo-tiny@") for v in verdicts)
        typed = [v.defect.description for v in verdicts if v.defect and v.defect.description]
        assert typed and set(typed) <= {"glitter", "sparkle"}, [v.defect for v in verdicts]
    finally:
        serve.shutdown()
        if started:
            stop_ray()
