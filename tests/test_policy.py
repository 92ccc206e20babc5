"""No blind veto: JUDO clears a flagged frame only where its clearing was measured reliable, and a
verdict names only the product's own defect types (issue #28 item 2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from judo_model.runtime.clearing import (
    CLEARING_FILE,
    ClearingRecord,
    ClearingRule,
    clearing_allowed,
    missed_rate_upper_bound,
)
from judo_model.runtime.output import format_target, parse_output
from judo_model.runtime.vocabulary import (
    DomainKnowledgeError,
    constrain_type,
    load_domain_knowledge,
    product_vocabulary,
)
from pipelines.clearing import ProductPolicies, ProductPolicy, decide
from pipelines.clearing_calibration import measure_clearing, rule_of, validation_frames
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.config import parse_config
from pipelines.engines import JudoResult
from pipelines.judo_request import JudoFrameRequest
from pipelines.serve_app import JudoInference, verdict_from_result, with_vocabulary

MMAD_KNOWLEDGE = {"MTD": {"magnetic_tile": {"good": "a dark grey tile", "crack": "a thin dark line",
                                            "blowhole": "a round pit"},
                          "other": {"good": "x", "solder_splash": "y"}}}


def request(**overrides) -> JudoFrameRequest:
    image = np.zeros((100, 200, 3), np.uint8)
    amap = np.zeros((100, 200), np.float32)
    amap[60:80, 150:190] = 9.0
    values = dict(frame_id="f-1", camera_id="c1", line_id="l1", product="magnetic_tile", captured_at=None,
                  query=image, references=[image], anomaly_score=5.0, threshold=2.0, anomaly_map=amap)
    values.update(overrides)
    return JudoFrameRequest(**values)


def answer(text: str) -> JudoResult:
    return JudoResult(text, parse_output(text), "judo-tiny@abc", 3.0)


NO = format_target(reasoning="the tile matches the reference", defect=False)


def test_the_rule_keeps_a_flag_unless_judo_may_clear():
    assert decide(True, True, False) == (True, "judo-confirmed")
    assert decide(True, False, False) == (True, "prefilter-flag-kept")
    assert decide(True, False, True) == (False, "judo-cleared")
    assert decide(True, None, True) == (True, "prefilter-judo-unreadable")
    assert decide(False, True, False) == (True, "judo")
    assert decide(False, False, False) == (False, "judo")


def test_a_product_without_measured_clearing_keeps_a_flagged_frame_flagged_when_judo_says_no():
    verdict = verdict_from_result(request(), answer(NO), ProductPolicy("magnetic_tile"))
    assert verdict.is_anomalous and verdict.judo_is_anomalous is False
    assert verdict.decided_by == "prefilter-flag-kept"
    assert verdict.defect.type == "unknown" and "not measured reliable" in verdict.defect.description
    assert verdict.defect.reasoning == "the tile matches the reference"
    x1, y1, x2, y2 = verdict.defect.boxes[0].as_list()  # the prefilter's hot region, not the whole frame
    assert 0.6 <= x1 < x2 <= 1.0 and 0.5 <= y1 < y2 <= 0.9
    assert verdict_from_result(request(), answer(NO)).decided_by == "prefilter-flag-kept"  # the default policy


def test_a_product_with_reliable_clearing_lets_judo_clear():
    verdict = verdict_from_result(request(), answer(NO), ProductPolicy("magnetic_tile", may_clear=True))
    assert not verdict.is_anomalous and verdict.defect is None and verdict.decided_by == "judo-cleared"


def test_clearing_is_allowed_only_on_enough_defects_with_the_serving_model(tmp_path):
    rule = ClearingRule()
    assert missed_rate_upper_bound(0, 59) <= 0.05 < missed_rate_upper_bound(0, 58)
    assert missed_rate_upper_bound(3, 3) == 1.0 and missed_rate_upper_bound(0, 0) == 1.0
    record = ClearingRecord("magnetic_tile", "judo-tiny@abc", good_frames=40, defect_frames=80,
                            good_cleared=30, defects_cleared=0, sources=["validation"])
    record.save(tmp_path, rule)
    stored = json.loads((tmp_path / CLEARING_FILE).read_text())
    assert stored["allowed"] and stored["missed_defect_rate"] == 0.0 and stored["clearing_precision"] == 1.0
    assert ClearingRecord.load(tmp_path) == record
    assert clearing_allowed(record, rule, "judo-tiny@abc")
    assert not clearing_allowed(record, rule, "judo-tiny@other")  # measured with another checkpoint
    few = ClearingRecord("magnetic_tile", "m", 10, 20, 8, 0)
    assert not clearing_allowed(few, rule)  # 0 of 20 missed: the bound (0.14) is above 0.05
    assert clearing_allowed(few, ClearingRule(max_missed_defect_rate=0.15))
    missing = ClearingRecord("magnetic_tile", "m", 10, 100, 8, 6)
    assert not clearing_allowed(missing, rule)
    assert not clearing_allowed(None, rule)
    policies = ProductPolicies.load({"magnetic_tile": {"bank": str(tmp_path)}, "bottle": {"bank": str(tmp_path / "x")}},
                                    rule, "judo-tiny@abc")
    assert policies.of("magnetic_tile").may_clear and not policies.of("bottle").may_clear
    assert not policies.of("never-configured").may_clear


def test_types_stay_inside_the_products_vocabulary():
    library = ["Crack", "Blowhole"]
    said = format_target(reasoning="a pit", defect=True, defect_type="solder_splash", boxes=[[0, 0, 500, 500]])
    verdict = verdict_from_result(request(defect_types=library), answer(said), ProductPolicy("magnetic_tile"))
    assert verdict.defect.type == "unknown" and "solder_splash" in verdict.defect.description
    said = format_target(reasoning="a pit", defect=True, defect_type="Blowhole", boxes=[[0, 0, 500, 500]])
    verdict = verdict_from_result(request(defect_types=library), answer(said))
    assert verdict.defect.type == "blowhole" and verdict.decided_by == "judo-confirmed"
    verdict = verdict_from_result(request(), answer(said))  # no library, no domain knowledge
    assert verdict.defect.type == "unknown" and verdict.defect.description
    assert constrain_type(None, [])[0] == "unknown"


def test_domain_knowledge_gives_a_product_its_vocabulary(tmp_path):
    (tmp_path / "domain_knowledge.json").write_text(json.dumps(MMAD_KNOWLEDGE))
    assert set(load_domain_knowledge(tmp_path / "domain_knowledge.json", "magnetic_tile")) == {"crack", "blowhole"}
    policy = ProductPolicy.load("magnetic_tile", tmp_path, None, ClearingRule(), None)
    assert sorted(policy.vocabulary(None)) == ["blowhole", "crack"]
    said = format_target(reasoning="a line", defect=True, defect_type="crack", boxes=[[0, 0, 500, 500]])
    assert verdict_from_result(request(), answer(said), policy).defect.type == "crack"
    assert with_vocabulary(request(), policy).defect_types == ["crack", "blowhole"]
    assert with_vocabulary(request(), ProductPolicy("magnetic_tile")).defect_types == ["unknown"]
    assert product_vocabulary(["Missing Component"], ["missing_component", "scratch"]) == ["Missing Component",
                                                                                           "scratch"]
    with pytest.raises(DomainKnowledgeError, match="no domain-knowledge entry for product 'tire'"):
        load_domain_knowledge(tmp_path / "domain_knowledge.json", "tire")


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(), reason="no shipped JUDO checkpoint")
def test_the_shipped_judo_names_unknown_for_a_product_without_a_vocabulary():
    """The real model, decoding under the real constraint: its type slot can only say ``unknown``."""
    judo = parse_config({"lines": [{"id": "l", "product": "p", "cameras": ["c"]}], "products": {"p": {"bank": "b"}},
                         "judo": {"checkpoint": str(SHIPPED_CHECKPOINT)}}).judo
    inference = JudoInference(judo.model_dump(mode="json"), products={"magnetic_tile": {"bank": None}})
    rng = np.random.default_rng(0)
    query = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)
    verdicts = inference.infer([request(query=query, frame_id=f"f-{i}", anomaly_score=50.0) for i in range(3)])
    for verdict in verdicts:
        assert verdict.is_anomalous  # flagged, and JUDO may not clear this product
        if verdict.defect is not None:
            assert verdict.defect.type == "unknown", verdict.defect


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(), reason="no shipped JUDO checkpoint")
def test_clearing_is_measured_on_the_products_validation_frames_only(pipeline_banks, tmp_path):
    """The shipped JUDO on bottle's labelled validation frames (validation/good, val_qa/<type>), as the
    pipeline shows them; the record lands in the bank folder and decides with the config's rule."""
    bank = tmp_path / "bottle"
    shutil.copytree(pipeline_banks["bottle"], bank)
    data = pipeline_banks["bottle"].parent.parent / "data" / "Synthetic"
    frames = validation_frames(data, "bottle")
    assert frames and {"validation", "val_qa"} == {path.parent.parent.name for path, _ in frames}
    config = parse_config({"lines": [{"id": "l", "product": "bottle", "cameras": ["c"]}],
                           "products": {"bottle": {"bank": str(bank)}},
                           "judo": {"checkpoint": str(SHIPPED_CHECKPOINT), "clearing": {"min_defect_frames": 5}}})
    record = measure_clearing(config, "bottle", data, "bottle")
    assert record.good_frames + record.defect_frames == len(frames) and record.defect_frames > 0
    assert 0 <= record.defects_cleared <= record.defect_frames and record.model_version.startswith("judo-tiny@")
    record.save(bank, rule_of(config))
    print(record.summary(rule_of(config)))
    policy = ProductPolicy.load("bottle", bank, None, rule_of(config), record.model_version)
    assert policy.may_clear == clearing_allowed(record, rule_of(config))
    assert not clearing_allowed(record, ClearingRule())  # a few validation frames never suffice by default
