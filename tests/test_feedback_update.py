"""Learning from the line without Kafka or Ray: a confirmed false alarm joins the bank (a new revision,
the threshold kept, older banks still load), a relabelled defect joins the library, reviewed frames
make an MVTec/MMAD folder, and the prefilter service picks a new revision up by itself."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest
import torch

from actors.prefilter import PrefilterService
from judo_model.data.mvtec import discover_categories
from judo_model.data.synth import render_sample
from judo_model.mmad.format import MMADDataset, read_mmad_json
from judo_model.prefilter.bank_format import BANK_META
from judo_model.prefilter.references import DEFECTS_SUBDIR, REFERENCES_SUBDIR, DefectExemplars, ReferenceIndex
from judo_model.prefilter.scorer import PrefilterScorer
from judo_model.prefilter.update import (
    FEEDBACK_META_KEY,
    ReviewedFrame,
    review_label,
    update_bank_folder,
    write_review_folder,
)
from pipelines.cli import build_parser
from tests.feedback_support import flagged_normal


@pytest.fixture(scope="module")
def bank(pipeline_banks, tmp_path_factory):
    """A copy of the session's bottle bank (updates never touch the shared one), and a flagged normal frame."""
    original = pipeline_banks["bottle"]
    scorer = PrefilterScorer.load(original)
    return original, scorer, flagged_normal(scorer), tmp_path_factory.mktemp("feedback-update")


def reviewed(image, label="good", frame_id="f-1", feedback_id="fb1", anomalous=True) -> ReviewedFrame:
    return ReviewedFrame(frame_id, "bottle", image, label, feedback_id, "reject" if label == "good" else "relabel",
                         "Ana", verdict_is_anomalous=anomalous)


def test_the_operators_action_gives_the_label():
    assert review_label("reject", True, "crack", None) == "good"  # a false alarm
    assert review_label("reject", False, None, None) == "unknown"  # a missed defect, untyped
    assert review_label("confirm", True, "crack", None) == "crack"
    assert review_label("confirm", True, None, None) == "unknown"
    assert review_label("confirm", True, "Broken Large", None) == "broken_large"
    assert review_label("confirm", False, None, None) == "good"
    assert review_label("relabel", True, "crack", "scratch") == "scratch"
    with pytest.raises(ValueError):
        review_label("relabel", True, "crack", None)


def test_a_false_alarm_joins_the_bank_and_passes_afterwards(bank):
    original, before, image, tmp = bank
    copy = shutil.copytree(original, tmp / "bottle-a")
    others = [render_sample("bottle", None, seed=(s,), size=256).image for s in range(700, 706)]
    update = update_bank_folder(copy, [reviewed(image)])
    assert update is not None and update.revision == before.bank.revision + 1
    after = PrefilterScorer.load(copy)
    assert after.bank.revision == update.revision
    assert after.threshold == before.threshold, "the calibration is kept"
    assert after.bank.score([image]).scores[0] < before.threshold, "the reviewed frame passes now"
    assert update.scores_before[0] > before.threshold > update.scores_after[0]
    assert np.array_equal(after.bank.memory[:len(before.bank.memory)], before.bank.memory), "old patches stay"
    assert (after.bank.score(others).scores <= before.bank.score(others).scores + 1e-4).all(), \
        "adding normal patches never raises a score"
    history = json.loads((copy / BANK_META).read_text())[FEEDBACK_META_KEY]
    assert history[-1]["normal_frames"] == ["f-1"] and history[-1]["feedback_ids"] == ["fb1"]
    refs = ReferenceIndex.load(copy / REFERENCES_SUBDIR)
    assert "feedback/f-1" in refs.ids and (copy / "feedback" / "good" / "f-1.png").is_file()
    # the same feedback again (an apply that died before saving its position) changes nothing
    assert update_bank_folder(copy, [reviewed(image)]) is None
    assert PrefilterScorer.load(copy).bank.revision == update.revision
    # the bank as it was (no feedback history) still loads and still flags the frame
    assert PrefilterScorer.load(original).bank.score([image]).scores[0] > before.threshold


def test_a_relabelled_defect_joins_the_library(bank):
    original, scorer, _, tmp = bank
    copy = shutil.copytree(original, tmp / "bottle-b")
    library = ReferenceIndex.load(copy / REFERENCES_SUBDIR).defects
    defect = render_sample("bottle", "contamination", seed=(31,), size=256).image
    update = update_bank_folder(copy, [reviewed(defect, label="hairline_crack", frame_id="d-1", feedback_id="fb2")])
    assert update.revision == scorer.bank.revision + 1 and update.defect_frames == ["d-1"]
    grown = DefectExemplars.load(copy / REFERENCES_SUBDIR / DEFECTS_SUBDIR)
    assert len(grown) == len(library) + 1 and grown.ids[-1] == "feedback/d-1"
    assert "hairline crack" in grown.types and set(library.types) < set(grown.types)
    assert (copy / "feedback" / "hairline_crack" / "d-1.png").is_file()


def test_reviewed_frames_make_an_mvtec_and_mmad_folder(bank, tmp_path):
    _, _, image, _ = bank
    defect = render_sample("bottle", "contamination", seed=(32,), size=256).image
    write_review_folder(tmp_path, [reviewed(image), reviewed(defect, "crack", "d-1", "fb3"),
                                   reviewed(defect, "scratch", "d-2", "fb4")])
    [category] = discover_categories(tmp_path / "Feedback")
    assert category.name == "bottle"
    assert [s.sample_id for s in category.split("train", "good")] and len(category.split("test")) == 2
    records = read_mmad_json(tmp_path / "mmad.json")
    assert len(records) == 3 and all((tmp_path / key).is_file() for key in records)
    assert len(MMADDataset(tmp_path)) == 3 and MMADDataset(tmp_path).missing_files() == []
    # judged again: the frame moves to its new label
    write_review_folder(tmp_path, [reviewed(defect, "scratch", "d-1", "fb5")])
    assert not list(tmp_path.glob("Feedback/bottle/test/crack/*")) and len(read_mmad_json(tmp_path / "mmad.json")) == 3
    assert len((tmp_path / "reviews.jsonl").read_text().splitlines()) == 4


def test_the_prefilter_service_picks_a_new_revision_up(bank):
    original, scorer, image, tmp = bank
    copy = shutil.copytree(original, tmp / "bottle-c")
    service = PrefilterService({"bottle": str(copy)}, threads=1, with_references=True)
    [first] = service.score_frames("bottle", [image])
    assert first["suspect"] and first["model_version"] == f"prefilter:bottle.r{scorer.bank.revision}"
    update_bank_folder(copy, [reviewed(image)])
    assert service.bank_versions() == {"bottle": scorer.bank.revision + 1}
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1), \
        "the reloaded bank's fitting-time thread counts do not replace the service's"
    [second] = service.score_frames("bottle", [image])
    assert not second["suspect"] and second["model_version"] == f"prefilter:bottle.r{scorer.bank.revision + 1}"
    assert "feedback/f-1" in service.references.get("bottle").ids


def test_the_command_is_registered():
    args = build_parser().parse_args(["feedback", "apply", "--config", "pipeline.yaml"])
    assert args.func.__module__ == "pipelines.feedback_cli" and args.state is None and args.out is None
