"""Question-free probes of one checkpoint or of the evidence: verdicts, region cut, hint sweep, note copying."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.ablation.rows import RESULTS, recipe_summary, subset_file
from judo_model.data import questions as mmad
from judo_model.data.knowledge import category_facts, defect_title
from judo_model.imaging import load_image, load_mask
from judo_model.mmad.format import MMADDataset
from judo_model.mmad.judo_answerer import load_juxtaposed_answerer
from judo_model.prefilter.features import BackboneConfig
from judo_model.prefilter.references import EXEMPLAR_BLOCKS, EXEMPLAR_CROP_FRACTION, EXEMPLAR_VOTES, DefectExemplars
from judo_model.runtime.inference import JudoModel
from judo_model.runtime.evidence import REGION_CUT, hottest_boxes, refine_region
from judo_model.runtime.inputs import prompt_options_of, read_training_log
from judo_model.runtime.output import boxes_to_mask, parse_output
from judo_model.training.data import defect_titles, load_examples
from judo_model.training.evidence import load_evidence, prepare_evidence
from judo_model.training.note_reading import NoteReadingSampler
from judo_model.training.recipe import Recipe


def cmd_verdicts(args) -> None:
    torch.set_num_threads(args.threads)
    judo = load_juxtaposed_answerer(args.checkpoint, args.data).judo
    correct, typed, box_ious, refined_ious, defective = 0, 0, [], [], 0
    same_box, same_type, said_defect, hinted = 0, 0, 0, 0
    items = list(MMADDataset(args.data, subset_file(args.data, "verdicts")))
    for item in items:
        _, parsed = judo.generate(item.template_paths(1)[0], item.image_path, max_new_tokens=64)
        correct += parsed.defect is (not item.is_normal)
        if parsed.defect:
            anomaly_map, threshold, hint, _ = judo.evidence(item.image_path, load_image(item.image_path))
            said_defect += 1
            same_box += bool(parsed.boxes) and parsed.boxes[0] == hottest_boxes(anomaly_map, threshold)[0]
            hinted += hint is not None
            same_type += hint is not None and parsed.defect_type == hint
        if item.is_normal:
            continue
        defective += 1
        defect = item.key.split("/")[-2]
        facts = category_facts(item.category).defects
        typed += defect in facts and parsed.defect_type == facts[defect].title
        truth = load_mask(item.mask_path)
        boxes = boxes_to_mask(parsed.boxes, *truth.shape)
        refined, _ = judo.grounding(item.image_path, parsed.boxes)
        box_ious.append((boxes & truth).sum() / max(1, (boxes | truth).sum()))
        refined_ious.append((refined & truth).sum() / max(1, (refined | truth).sum()))
    result = {"name": args.name, "checkpoint": str(args.checkpoint), "recipe": recipe_summary(args.checkpoint),
              "images": len(items), "verdict_accuracy": round(100 * correct / len(items), 1),
              "type_accuracy": round(100 * typed / max(defective, 1), 1),
              "box_iou": round(float(np.mean(box_ious)), 3), "refined_iou": round(float(np.mean(refined_ious)), 3),
              "note_box_followed": round(100 * same_box / max(said_defect, 1), 1),
              "note_type_followed": round(100 * same_type / max(hinted, 1), 1)}
    print(json.dumps(result), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"verdicts_{args.name}.json").write_text(json.dumps(result, indent=1))


#: The cuts ``region-cut`` tries: the share of the anomaly map's range inside the boxes below which
#: a pixel of the model's region is dropped (0: the filled boxes).
REGION_CUTS = (0.0, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)


def cmd_region_cut(args) -> None:
    """Choose how the verdict's boxes are refined into a mask, on the validation split only.

    The model's boxes on every defective validation image are refined at each cut of
    :data:`REGION_CUTS` and scored as the MMAD harness scores grounding (IoU with the mask,
    images with a region); the test subset is scored at the same cuts for the record only.
    """
    torch.set_num_threads(args.threads)
    judo = load_juxtaposed_answerer(args.checkpoint, args.data).judo
    splits = {"val": "mmad_val.json", "test": subset_file(args.data, "test")}
    ious = {split: {cut: [] for cut in REGION_CUTS} for split in splits}
    for split, questions in splits.items():
        for item in MMADDataset(args.data, questions):
            if item.is_normal:
                continue
            _, parsed = judo.generate(item.template_paths(1)[0], item.image_path, max_new_tokens=64)
            if not parsed.boxes:
                continue
            truth = load_mask(item.mask_path)
            anomaly_map = judo.evidence(item.image_path, load_image(item.image_path))[0]
            for cut in REGION_CUTS:
                region = refine_region(list(parsed.boxes), *truth.shape, anomaly_map, cut=cut)
                ious[split][cut].append(float((region & truth).sum() / max(1, (region | truth).sum())))
    means = {split: {cut: float(np.mean(v)) if v else 0.0 for cut, v in by_cut.items()}
             for split, by_cut in ious.items()}
    best = max(REGION_CUTS, key=lambda cut: means["val"][cut])
    print(f"| cut | val IoU ({len(ious['val'][0.0])} images) | test IoU ({len(ious['test'][0.0])} images) |")
    print("|---|---|---|")
    for cut in REGION_CUTS:
        mark = " (best on val)" if cut == best else " (in use)" if cut == REGION_CUT else ""
        print(f"| {cut}{mark} | {means['val'][cut]:.3f} | {means['test'][cut]:.3f} |")
    result = {"checkpoint": str(args.checkpoint), "best_on_val": best, "in_use": REGION_CUT,
              "mean_iou": {split: {str(cut): round(v, 4) for cut, v in by_cut.items()}
                           for split, by_cut in means.items()},
              "images": {split: len(by_cut[0.0]) for split, by_cut in ious.items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "region_cut.json").write_text(json.dumps(result, indent=1))


#: Exemplar settings ``hint-sweep`` compares: Lite0 blocks and crop side (share of the image side).
HINT_BLOCKS = ((2, 4, 10), (4, 10, 15), (10, 15), (15,))
HINT_CROPS = (0.15, 0.2, 0.25, 0.35)
HINT_VOTES = (1, 3, 5, 7)


def cmd_hint_sweep(args) -> None:
    """Choose the defect exemplars' blocks, crop and votes without a test image.

    Per category, the labelled training defects are the library (as ``prepare_evidence`` builds
    it); each is labelled by the others (leave one out) and each validation defect by all of them.
    Only the setting in use is also scored on the test defects, for the record.
    """
    prepare_evidence(args.data)
    evidence = load_evidence(args.data)
    manifest = json.loads((args.data / "splits.json").read_text())
    defects = [e for e in manifest["images"] if e["label"] != "good"]
    by_split = {split: {c: [e for e in defects if e["split"] == split and e["category"] == c]
                        for c in manifest["categories"]} for split in ("train", "val", "test")}
    images = {e["key"]: load_image(args.data / e["key"]) for e in defects}

    def score(blocks, crop, splits):
        """Right labels per (split, votes), over every category with a library."""
        right = {(split, k): 0 for split in splits for k in HINT_VOTES}
        backbone = BackboneConfig(blocks=blocks, threads=1)
        for category, library in by_split["train"].items():
            if not library:
                continue
            exemplars = DefectExemplars.build(category, [images[e["key"]] for e in library],
                                              [evidence.anomaly_map(e["key"]) for e in library],
                                              [defect_title(category, e["label"]) for e in library],
                                              [e["key"] for e in library], backbone=backbone, crop_fraction=crop)
            for split in splits:
                if split == "loo":
                    queries, descriptors, exclude = library, exemplars.descriptors, list(range(len(library)))
                else:
                    queries, exclude = by_split[split][category], None
                    descriptors = exemplars.crop_descriptors([images[e["key"]] for e in queries],
                                                             [evidence.anomaly_map(e["key"]) for e in queries])
                truth = [defect_title(category, e["label"]) for e in queries]
                for k in HINT_VOTES:
                    labels = exemplars.vote(descriptors, k=k, exclude=exclude)
                    right[split, k] += sum(label == t for label, t in zip(labels, truth))
        return right

    counts = {"loo": sum(len(v) for v in by_split["train"].values()), "val": sum(len(v) for v in by_split["val"].values()),
              "test": sum(len(v) for c, v in by_split["test"].items() if by_split["train"][c])}
    rows = []
    for blocks in HINT_BLOCKS:
        for crop in HINT_CROPS:
            right = score(blocks, crop, ("loo", "val"))
            for k in HINT_VOTES:
                rows.append({"blocks": list(blocks), "crop": crop, "votes": k,
                             "loo": right["loo", k] / counts["loo"], "val": right["val", k] / counts["val"],
                             "both": (right["loo", k] + right["val", k]) / (counts["loo"] + counts["val"])})
    best = max(rows, key=lambda row: row["both"])
    in_use = {"blocks": list(EXEMPLAR_BLOCKS), "crop": EXEMPLAR_CROP_FRACTION, "votes": EXEMPLAR_VOTES}
    in_use["test"] = score(EXEMPLAR_BLOCKS, EXEMPLAR_CROP_FRACTION, ("test",))["test", EXEMPLAR_VOTES] / counts["test"]
    print(f"| blocks | crop | votes | train, leave one out ({counts['loo']}) | val ({counts['val']}) | both |")
    print("|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda row: -row["both"])[:args.top]:
        mark = " (in use)" if all(row[key] == in_use[key] for key in ("blocks", "crop", "votes")) else ""
        print(f"| {tuple(row['blocks'])}{mark} | {row['crop']} | {row['votes']} | {row['loo']:.3f} | {row['val']:.3f} "
              f"| {row['both']:.3f} |")
    print(f"best on train + val: {best}; in use: {in_use} ({counts['test']} test defects)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hint_sweep.json").write_text(json.dumps({"images": counts, "rows": rows, "best": best,
                                                          "in_use": in_use}, indent=1))


#: Seed of the notes ``notes`` checks: none of the training samplers' (seed, seed + 7).
NOTES_SEED = 1000


def cmd_notes(args) -> None:
    """How exactly a checkpoint repeats Stage 0's text-only notes (verdict, box, type), on fresh notes
    (naming a product where the checkpoint was trained on such notes, plus one question per note)."""
    torch.set_num_threads(args.threads)
    judo = JudoModel.load(args.checkpoint)
    examples = load_examples(args.data, "mmad_train.json")
    products = prompt_options_of(args.checkpoint).product_note
    sampler = NoteReadingSampler(defect_titles(examples), seed=NOTES_SEED,
                                 categories=sorted({e.category for e in examples}) if products else None)
    counts = {"notes": args.count, "verdict": 0, "above": 0, "box": 0, "hinted": 0, "type": 0}
    for prompt, target in sampler.batch(args.count):
        expected = parse_output(target)
        _, written = judo.generate_from_prompt(prompt, max_new_tokens=96)
        counts["verdict"] += written.defect is expected.defect
        if expected.defect:
            counts["above"] += 1
            counts["box"] += bool(written.boxes) and written.boxes[0] == expected.boxes[0]
            if expected.defect_type:
                counts["hinted"] += 1
                counts["type"] += written.defect_type == expected.defect_type
    result = {"name": args.name, "checkpoint": str(args.checkpoint), **counts}
    if products:
        result["questions"] = note_questions(judo, args.checkpoint, examples, args.count)
    print(json.dumps(result), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"notes_{args.name}.json").write_text(json.dumps(result, indent=1))


def note_questions(judo, checkpoint: Path, examples, count: int) -> dict[str, list[int]]:
    """Per MMAD question type, [right, asked] over fresh notes naming a product, each with one
    question the note answers (the answer decoded among the options, as the guided harness does),
    drawn above the threshold and hinted as often as the checkpoint's Stage 0 notes were."""
    recipe = Recipe.from_dict(read_training_log(checkpoint).get("recipe", {}))
    kinds = {mmad.ANOMALY_QUESTION: "Anomaly Detection", mmad.OBJECT_QUESTION: "Object Classification",
             mmad.CLASSIFICATION_QUESTION: "Defect Classification", mmad.LOCALIZATION_QUESTION: "Defect Localization",
             mmad.DESCRIPTION_QUESTION: "Defect Description", mmad.ANALYSIS_QUESTION: "Defect Analysis"}
    sampler = NoteReadingSampler(defect_titles(examples), seed=NOTES_SEED, above_share=recipe.note.above_share,
                                 hint_share=recipe.note.hint_share,
                                 categories=sorted({e.category for e in examples}), question_share=1.0)
    tally: dict[str, list[int]] = {}
    for prompt, target in sampler.batch(count):
        question = prompt.messages[0]["content"][-1]["text"].split("Question 1: ", 1)[1].split("\n")
        options = [line.split(": ", 1)[1] for line in question[1:] if line[:3] in ("A: ", "B: ", "C: ", "D: ")]
        _, written = judo.generate_from_prompt(prompt, max_new_tokens=160, answer_options=options)
        kind = kinds.get(question[0], question[0])
        right = tally.setdefault(kind, [0, 0])
        right[0] += written.answers[:1] == parse_output(target).answers[:1]
        right[1] += 1
    return tally
