"""Shared fixtures of the training tests: a small synthetic folder with evidence, and a smoke checkpoint.

Session-scoped, so the two training test modules build them once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from judo_model.data.synth.writer import generate_dataset
from judo_model.training.data import load_examples
from judo_model.training.evidence import prepare_evidence
from judo_model.training.pipeline import train
from judo_model.training.recipe import GrpoStage, NoteStage, Recipe, SegStage, SftStage


CATEGORIES = ["bottle", "fabric"]
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "judo-tiny"
#: Options the shipped checkpoint recorded that left the recipe (never-shipped experiments, kept
#: with their results in docs/judo_training.md, "Removed experiments").
REMOVED_OPTIONS = {"grpo_scale_rewards", "grpo_guided", "grpo_region_truth", "grpo_empty_region_reward",
                   "grpo_temperature", "invented_names", "sft_cue_answers_only", "sft_note_replay",
                   "sft_unseen_product_share"}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Two categories, 20 images each, with cached evidence maps and banks."""
    root = tmp_path_factory.mktemp("judo-train-data")
    generate_dataset(root, seed=3, categories=CATEGORIES, images_per_category=20, size=112, heldout=[], workers=1)
    prepare_evidence(root)
    return root


@pytest.fixture(scope="session")
def examples(data_dir):
    return load_examples(data_dir, "mmad_train.json")


@pytest.fixture(scope="session")
def smoke_checkpoint(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("judo-smoke") / "ckpt"
    recipe = Recipe(note=NoteStage(steps=2, batch_size=2), seg=SegStage(steps=2, batch_size=2),
                    sft=SftStage(steps=2, batch_size=2), grpo=GrpoStage(steps=2, generations=2, prompts_per_step=1),
                    threads=1)
    log = train(data_dir, out, stage="all", recipe=recipe, curves_png=out.parent / "curves.png")
    return out, log


