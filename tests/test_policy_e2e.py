"""No blind veto, end to end (real Kafka, Ray, Serve and the shipped JUDO): with every frame flagged
by the prefilter and no product measured for JUDO's clearing, no frame leaves the line cleared —
JUDO's "no" is kept beside the flag — and every type is the product's own or ``unknown``."""

from __future__ import annotations

import shutil

import pytest

from judo_model.prefilter.references import DEFECTS_SUBDIR, REFERENCES_SUBDIR, ReferenceIndex
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.runner import Pipeline
from tests.pipeline_support import pipeline_test_config
from tooling.gallery import collect_verdicts
from tooling.simulator import CameraSimulator, CameraSpec

pytestmark = pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(),
                                reason="no shipped JUDO checkpoint")

FRAMES = 16
#: far below every frame's score (the demo banks' normal frames score above 1): the prefilter flags all
FLAG_EVERYTHING = 0.05
KEPT = {"judo-confirmed", "prefilter-flag-kept", "prefilter-judo-unreadable"}


@pytest.fixture(scope="module")
def run(kafka, pipeline_banks, tmp_path_factory):
    """bottle with its defect library; hex_nut's bank copied without one (no vocabulary)."""
    tmp_path = tmp_path_factory.mktemp("policy-e2e")
    bare = tmp_path / "hex_nut"
    shutil.copytree(pipeline_banks["hex_nut"], bare)
    shutil.rmtree(bare / REFERENCES_SUBDIR / DEFECTS_SUBDIR)
    banks = {"bottle": pipeline_banks["bottle"], "hex_nut": bare}
    library = ReferenceIndex.load(pipeline_banks["bottle"] / REFERENCES_SUBDIR).defects.types
    config = pipeline_test_config(banks, SHIPPED_CHECKPOINT, kafka.settings(), tmp_path / "traces.jsonl", "policy")
    config = config.model_copy(update={"products": {
        name: p.model_copy(update={"threshold": FLAG_EVERYTHING}) for name, p in config.products.items()}})
    cameras = [CameraSpec(line.id, cam, line.product) for line in config.lines for cam in line.cameras]
    pipeline = Pipeline(config, kafka.settings()).start()
    try:
        sent = CameraSimulator(cameras, defect_rate=0.25, seed=5).publish(kafka.settings(), config.topics.frames,
                                                                          FRAMES)
        collected = collect_verdicts(kafka.settings(), config.topics.verdicts, {s.frame.frame_id for s in sent},
                                     timeout_s=300)
    finally:
        pipeline.stop()
    return sent, collected, library


def test_no_flagged_frame_is_cleared_where_clearing_was_never_measured(run):
    sent, collected, _ = run
    assert set(collected.verdicts) == {s.frame.frame_id for s in sent}
    verdicts = list(collected.verdicts.values())
    for verdict in verdicts:
        assert verdict.stage == "judo" and verdict.is_anomalous, verdict
        assert verdict.decided_by in KEPT, verdict.decided_by
        if verdict.judo_is_anomalous is False:
            assert verdict.decided_by == "prefilter-flag-kept" and verdict.defect.boxes
    said_no = [v for v in verdicts if v.judo_is_anomalous is False]
    print(f"JUDO said no on {len(said_no)} of {len(verdicts)} flagged frames; every one stayed flagged")
    assert said_no, "the shipped JUDO calls some normal frames normal; none did here"


def test_types_stay_inside_each_products_vocabulary(run):
    _, collected, library = run
    own = {t.lower().replace(" ", "_") for t in library} | {"unknown"}
    for verdict in collected.verdicts.values():
        if verdict.defect is None:
            continue
        if verdict.product == "hex_nut":  # no library, no domain knowledge
            assert verdict.defect.type == "unknown", verdict.defect
        else:
            assert verdict.defect.type in own, (verdict.defect.type, own)
