"""JUDO training: a 2-step smoke run of every stage, the harness and CLI on it, and the recipe."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace

import pytest

from benchmarks.ablation.rows import ROWS
from judo_model.data.knowledge import category_facts, defect_title
from judo_model.mmad.evaluate import evaluate
from judo_model.mmad.format import MMADDataset
from judo_model.mmad.judo_answerer import load_juxtaposed_answerer
from judo_model.runtime.inference import JudoModel
from judo_model.runtime.inputs import TRAINING_FILE, prompt_options_of, read_training_log
from judo_model.training.cli import register_train
from judo_model.training.recipe import GrpoStage, NoteStage, Recipe, SftStage, flat_name, option_values
from pipelines.cli import main

from tests.training_support import REMOVED_OPTIONS, SHIPPED_CHECKPOINT, data_dir, smoke_checkpoint  # noqa: F401 (fixtures)


def test_smoke_run_of_every_stage(smoke_checkpoint):
    out, log = smoke_checkpoint
    assert [s["stage"] for s in log.stages] == ["note", "seg", "sft", "grpo"]
    assert all(len(s["steps"]) == 2 for s in log.stages)
    assert {"reward", "answer_accuracy_reward", "segmentation_iou_reward", "structure_reward"} <= set(
        log.stages[3]["values"])
    assert (out / "stages" / "note" / "model.safetensors").is_file()
    assert (out.parent / "curves.png").stat().st_size > 1000
    assert (out / "stages" / "sft" / "model.safetensors").is_file()
    assert json.loads((out / "judo_training.json").read_text())["recipe"]["evidence_route"] == "heat_crop_text"
    judo = JudoModel.load(out)
    assert judo.model.config.model_type == "qwen2_5_vl"


def test_smoke_checkpoint_answers_through_the_mmad_harness(smoke_checkpoint, data_dir):
    out, _ = smoke_checkpoint
    answerer = load_juxtaposed_answerer(out, data_dir, max_new_tokens=8)
    result = evaluate(MMADDataset(data_dir, "mmad.json"), answerer, limit=1)
    assert result.answers and all(a["question_type"] for a in result.answers)


def test_eval_mmad_cli_fits_banks_on_the_templates_of_any_mmad_folder(smoke_checkpoint, data_dir, tmp_path,
                                                                        monkeypatch):
    """``judo eval mmad --model CKPT`` on a folder without judo train's evidence cache."""
    out, _ = smoke_checkpoint
    plain = tmp_path / "mmad-folder"
    shutil.copytree(data_dir, plain, ignore=shutil.ignore_patterns("evidence"))
    monkeypatch.setenv("JUDO_CACHE", str(tmp_path / "cache"))
    answers = tmp_path / "answers.json"
    assert main(["eval", "mmad", "--data", str(plain), "--model", str(out), "--limit", "2",
                 "--out", str(answers)]) == 0
    first = next(iter(MMADDataset(plain, "mmad.json")))
    banks = list((tmp_path / "cache" / "mmad-banks").glob(f"*/{first.dataset}/{first.category}/bank.json"))
    assert banks, "a bank was fitted on the folder's normal templates"
    products = list((tmp_path / "cache" / "mmad-banks").glob("*/products/descriptors.npy"))
    assert products, "the product library was built on the folder's normal templates"
    rows = json.loads(answers.read_text())
    assert rows and all(r["question_type"] for r in rows)
    grounding = json.loads(answers.with_name(answers.stem + "_grounding.json").read_text())
    assert grounding["images"] >= 1


def test_cli_runs_single_stages(data_dir, smoke_checkpoint, tmp_path):
    base = ["train", "--data", str(data_dir), "--seg-batch-size", "2", "--sft-batch-size", "2"]
    assert main([*base, "--stage", "seg", "--seg-steps", "1", "--out", str(tmp_path / "seg")]) == 0
    assert main([*base, "--stage", "sft", "--sft-steps", "1", "--init", str(tmp_path / "seg"),
                 "--evidence-route", "none", "--out", str(tmp_path / "sft")]) == 0
    with pytest.raises(ValueError, match="init"):
        main([*base, "--stage", "grpo", "--out", str(tmp_path / "grpo")])
    grpo = ["--grpo-steps", "1", "--grpo-generations", "2", "--grpo-prompts-per-step", "1", "--grpo-lr", "1e-4"]
    assert main([*base, "--stage", "grpo", *grpo, "--init", str(smoke_checkpoint[0]),
                 "--out", str(tmp_path / "grpo")]) == 0
    product = ["--product-note", "yes", "--note-question-share", "1.0", "--note-plain-steps", "1"]
    assert main([*base, "--stage", "note", "--note-steps", "2", "--note-batch-size", "2", *product,
                 "--out", str(tmp_path / "note")]) == 0
    assert main([*base, "--stage", "seg", "--seg-steps", "1", "--init", str(tmp_path / "note"), *product,
                 "--out", str(tmp_path / "seg-product")]) == 0

    assert prompt_options_of(tmp_path / "seg-product").product_note
    assert [s["stage"] for s in read_training_log(tmp_path / "seg-product")["stages"]] == ["note", "seg"]


def test_defect_titles_are_the_names_answers_use():
    assert defect_title("fabric", "broken_thread") == category_facts("fabric").defects["broken_thread"].title
    assert defect_title("fabric", "pulled_loop") == "pulled loop", "an unknown label reads as words"
    assert defect_title("a-plant-product", "weld_spatter") == "weld spatter"


def test_tiny_recipe_is_the_recipe_the_shipped_checkpoint_recorded():
    """Every option's default is what trained checkpoints/judo-tiny (its flat record predates the
    stage groups; ``make train`` passes --threads 2), and no recorded option is lost unnoticed."""
    shipped = json.loads((SHIPPED_CHECKPOINT / TRAINING_FILE).read_text())["recipe"]
    defaults = {flat_name(*key): value for key, value in option_values(Recipe())}
    recorded = {name: tuple(value) if isinstance(value, list) else value
                for name, value in shipped.items() if name in defaults}
    assert recorded == {**defaults, "threads": 2}
    assert Recipe.from_dict(shipped) == replace(Recipe(), threads=2)
    removed = set(shipped) - set(defaults)
    assert removed == REMOVED_OPTIONS, "an option left the recipe: say so in docs/judo_training.md"
    assert all(shipped[name] in (0, 0.0, 1.0, False, True, "group", "mask", "listed") for name in removed)


def test_recipe_records_read_back_nested_and_flat():
    recipe = Recipe(note=NoteStage(steps=5, question_weights=(1.0,) * 6), sft=SftStage(domain_knowledge_prob=0.0),
                    grpo=GrpoStage(steps=3), evidence_route=None, reference=False)
    nested = json.loads(json.dumps(recipe.as_dict()))
    assert nested["evidence_route"] is None and nested["reference"] is False, "prompt options stay top-level"
    assert Recipe.from_dict(nested) == recipe
    flat = {flat_name(*key): value for key, value in option_values(recipe)}
    assert Recipe.from_dict({**flat, "sft_cue_answers_only": True}) == recipe, "removed options are ignored"
    assert Recipe.from_dict({}) == Recipe()


def test_train_flags_are_the_recipe_options():
    """``judo train`` has one flag per option; the ablation's rows and ``make train`` parse."""
    parser = argparse.ArgumentParser()
    register_train(parser.add_subparsers())
    base = ["train", "--data", "D", "--out", "O"]
    args = parser.parse_args([*base, "--preset", "tiny", "--stage", "all", "--threads", "2", "--curves", "c.png"])
    assert args.threads == 2 and args.note_steps is None
    args = parser.parse_args([*base, "--note-question-weights", "1,2,3,4,5,6", "--sft-answer-type-from-note", "no",
                              "--seg-note-replay", "0.1", "--grpo-beta", "0.1"])
    assert (args.note_question_weights, args.sft_answer_type_from_note, args.seg_note_replay, args.grpo_beta) == \
        ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), False, 0.1, 0.1)
    for (stage, name), _ in option_values(Recipe()):
        if name not in ("reference", "evidence_route"):
            flag = "--" + (name if stage is None else f"{stage}_{name}").replace("_", "-")
            assert flag in parser._subparsers._group_actions[0].choices["train"]._option_string_actions, flag
    for row, (_, flags) in ROWS.items():
        if flags is not None:
            parser.parse_args([*base, *[f.replace("{main}", "M") for f in flags]])
