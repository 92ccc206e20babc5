"""The vLLM engine: its requests name the closed slots the transformers engine's ChoiceConstraint
closes (inside vLLM's engine core), its config and Serve options, and, in the engine environment
(``make vllm-env``): verdict and MMAD-answer parity with the transformers engine, a Serve replica on
vLLM, and the whole pipeline (real Kafka, real Ray) with its JUDO replica on vLLM.

The vLLM tests run vLLM in the engine environment's Python (``~/.cache/judo-inspect/vllm-venv``, or
``JUDO_VLLM_PYTHON``). Without it a plain ``pytest`` skips them and says why; ``make test`` sets
``JUDO_REQUIRE_VLLM=1``, and there a missing environment fails them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from ray import serve

from benchmarks.judo_requests import sample_requests
from benchmarks.vllm_parity import compare, mmad_parity, transformers_texts, vllm_texts
from cluster.ray_runtime import start_ray, stop_ray
from judo_model.processing import load_processor
from judo_model.cli import eval_mmad_argv
from judo_model.runtime.constraints import ChoiceConstraint
from judo_model.runtime.vllm_engine import slot_arguments
from judo_model.runtime.vllm_env import VLLM_PYTHON, vllm_unavailable
from pipelines.cli import build_parser
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.config import parse_config
from pipelines.runner import Pipeline
from pipelines.serve_app import APP_NAME, build_judo_deployment, deployment_options
from tests.pipeline_support import pipeline_test_config
from tests.test_data_dataset import synthetic_dataset  # noqa: F401  (shared session fixture)
from tooling.gallery import collect_verdicts
from tooling.simulator import CameraSimulator, CameraSpec

TYPES = ["hole", "crack", "scratch (deep)"]
OPTIONS = ["Yes", "Top left"]
CONFIG = {"lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
          "products": {"bottle": {"bank": "banks/bottle"}}}
WHY_NOT = vllm_unavailable()
#: ``make test`` sets it: the engine environment is part of the suite there, so its absence is a failure
REQUIRED = os.environ.get("JUDO_REQUIRE_VLLM") == "1"
E2E_FRAMES = 8


@pytest.fixture
def vllm_python() -> Path:
    """The engine environment's interpreter; skips (plain pytest) or fails (``make test``) without it."""
    if WHY_NOT is not None:
        if REQUIRED:
            pytest.fail(f"JUDO_REQUIRE_VLLM=1 but the vLLM engine environment is missing: {WHY_NOT}")
        pytest.skip(f"vLLM engine environment: {WHY_NOT}")
    return VLLM_PYTHON


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


def test_eval_mmad_hands_the_same_command_to_the_engine_environment():
    """``judo eval mmad --engine vllm`` without vLLM here reruns itself there with these arguments."""
    parser = build_parser()
    for argv in (["eval", "mmad", "--data", "d", "--model", "m", "--out", "o.json", "--engine", "vllm"],
                 ["eval", "mmad", "--data", "d", "--questions", "q.json", "--model", "m", "--shots", "0",
                  "--similar-templates", "--domain-knowledge", "--limit", "3", "--seed", "2", "--mode", "guided",
                  "--verdict-first", "--engine", "vllm", "--out", "o.json"]):
        args = parser.parse_args(argv)
        again = parser.parse_args(eval_mmad_argv(args))
        assert {k: v for k, v in vars(again).items() if k != "func"} == \
            {k: v for k, v in vars(args).items() if k != "func"}


def test_vllm_engine_gives_the_transformers_engines_verdicts(vllm_python):
    """A smaller set of ``benchmarks/vllm_parity.py``: greedy, the same requests, the same verdicts."""
    requests = sample_requests(8, seed=1)
    reference = transformers_texts(requests, SHIPPED_CHECKPOINT, 128)
    candidate = vllm_texts(requests, SHIPPED_CHECKPOINT, 128, python=vllm_python)
    result = compare(requests, reference, candidate)
    assert result["verdict_agreement"] == 1.0, result["differing"]  # 40 of 40 in docs/vllm_parity.json
    assert all(text.strip() for text in candidate)


def test_judo_eval_mmad_on_vllm_gives_the_transformers_engines_answers(vllm_python, synthetic_dataset):  # noqa: F811
    """The MMAD half of ``benchmarks/vllm_parity.py``, smaller: ``judo eval mmad --engine vllm`` (run in
    the engine environment) and ``--engine transformers`` on the first test images, answers decoded
    among the options (guided: the answer slot closed inside vLLM); the same letters on >= 95 %."""
    result = mmad_parity(synthetic_dataset, SHIPPED_CHECKPOINT, mode="guided", limit=6, python=vllm_python)
    assert result["images"] == 6 and result["questions"] >= 24
    assert result["answer_agreement"] >= 0.95, result["differing"]


def test_serve_replica_answers_on_vllm_in_the_engine_environment(vllm_python):
    """The Serve deployment with ``judo.engine: vllm`` on CPU: its replica runs in the engine
    environment (runtime_env py_executable), and concurrent requests each get their verdict."""
    config = parse_config({**CONFIG, "judo": {
        "checkpoint": str(SHIPPED_CHECKPOINT), "engine": "vllm", "max_new_tokens": 64, "num_cpus": 0,
        "vllm": {"python": str(vllm_python)}}, "telemetry": {"trace_file": None}})
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


def test_pipeline_on_vllm_gives_every_frame_one_verdict(vllm_python, kafka, pipeline_banks, tmp_path):
    """End to end: real Kafka, real Ray, the JUDO Serve replica on vLLM (``judo.engine: vllm``, in the
    engine environment); every simulated frame gets exactly one verdict, and the defective ones come
    from JUDO on vLLM."""
    config = pipeline_test_config(pipeline_banks, SHIPPED_CHECKPOINT, kafka.settings(), tmp_path / "traces.jsonl",
                                  "e2e-vllm", lines=1)
    judo = config.judo.model_copy(update={"engine": "vllm", "vllm": config.judo.vllm.model_copy(
        update={"python": vllm_python})})
    config = config.model_copy(update={"judo": judo})
    cameras = [CameraSpec(line.id, cam, line.product) for line in config.lines for cam in line.cameras]
    pipeline = Pipeline(config, kafka.settings()).start()
    try:
        sent = CameraSimulator(cameras, defect_rate=0.5, seed=7).publish(kafka.settings(), config.topics.frames,
                                                                         E2E_FRAMES)
        expected = {item.frame.frame_id for item in sent}
        collected = collect_verdicts(kafka.settings(), config.topics.verdicts, expected, timeout_s=600)
    finally:
        pipeline.stop()
    assert set(collected.verdicts) == expected and collected.duplicates == 0
    judged = [collected.verdicts[item.frame.frame_id] for item in sent if item.is_defective]
    assert judged and all(v.stage == "judo" and v.model_version.startswith("judo-tiny@") for v in judged), judged
