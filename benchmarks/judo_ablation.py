"""JUDO ablation: MMAD-format accuracy of each training stage, through the MMAD harness.

Rows (each adds one thing to the row above):

  (a) QA SFT only, no reference image      (b) + juxtaposed normal reference
  (c) + Stage 1 on pretrained evidence     (d) + Stage 2 domain-knowledge SFT
  (e) + Stage 3 GRPO

(d) is the shipped recipe (``judo train --stage all``; its Stage 3 is off, ``--grpo-steps N`` turns
it on for (e)); (a)-(c) are the same recipe with parts switched off, same steps; rows with a digit
(d0, e0, d1, e1) are earlier recipes, kept for comparison. Every row is
scored by :func:`judo_model.mmad.evaluate.evaluate` (MMAD's 1-shot protocol, no domain
knowledge in the prompt) on a balanced subset of the synthetic test split and of the
held-out categories, plus grounding IoU on defective images and verdict latency.

    judo train --stage all --data DATA --out RUNS/main                     # rows d (stages/sft), e
    python benchmarks/judo_ablation.py train --data DATA --runs RUNS --main RUNS/main   # rows c, a, b
    python benchmarks/judo_ablation.py eval  --data DATA --row c --checkpoint RUNS/c [--mode guided|likelihood]
    python benchmarks/judo_ablation.py verdicts --data DATA --name NAME --checkpoint CKPT   # Stage 1 routes
    python benchmarks/judo_ablation.py notes --data DATA --name NAME --checkpoint CKPT   # Stage 0 copy rates
    python benchmarks/judo_ablation.py random --data DATA                  # chance: one draw and the expectation
    python benchmarks/judo_ablation.py eval ... --subsets test_wide heldout_wide   # the ladder rows, wide
    python benchmarks/judo_ablation.py compare                             # ladder steps with 95 % intervals
    python benchmarks/judo_ablation.py report                              # docs/judo_ablation.{md,json}

``verdicts`` scores a checkpoint's verdict (defect yes/no, type) and region (IoU of the boxes and
of the boxes refined by the anomaly map) without any question, on 4 normal + 4 defective test
images per category: the measure for comparing Stage 1 evidence routes. It also reports how often
the model keeps the evidence note's box (of its defect verdicts) and type (of those with a hint).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "judo_ablation"
DOC_MD = ROOT / "docs" / "judo_ablation.md"
DOC_JSON = ROOT / "docs" / "judo_ablation.json"

ROWS = {
    "a": ("QA SFT only, no reference image", ["--no-reference", "--evidence-route", "none",
                                              "--domain-knowledge-prob", "0", "--grpo-steps", "0"]),
    "b": ("+ juxtaposed normal reference", ["--evidence-route", "none", "--domain-knowledge-prob", "0",
                                            "--grpo-steps", "0"]),
    # (c) shares Stage 1 with the shipped run (its OUT/stages/seg) and differs from (d) only in
    # having no domain knowledge in its QA SFT.
    "c": ("+ Stages 0 and 1 on pretrained evidence (note, heat map + zoomed crop), Stage 2 without domain "
          "knowledge",
          ["--stage", "sft", "--init", "{main}/stages/seg", "--domain-knowledge-prob", "0"]),
    "c-heat": ("(c) with the heat map only as evidence (route comparison)",
               ["--evidence-route", "heat", "--domain-knowledge-prob", "0", "--grpo-steps", "0"]),
    "d0": ("+ Stage 2 domain-knowledge SFT [earlier recipe]", None),
    "e0": ("+ Stage 3 GRPO [earlier recipe]", None),
    "d1": ("+ Stage 2 domain-knowledge SFT with Stage 1 replay [previous shipped, no defect hint]", None),
    "e1": ("+ Stage 3 GRPO on (d1) (not shipped)", None),
    "d2": ("+ Stage 2 domain-knowledge SFT with Stage 1 replay, evidence note with the labelled-defect hint "
           "[previous shipped, no note reading]", None),
    "d": ("Stage 0 note reading + Stages 1 and 2 as (d2) [previous shipped]", None),
    "d-note2500": ("(d) with 2 500 Stage 0 steps (1 500, resumed for 1 000; not shipped: over make train's hour)",
                   None),
    "d-types": ("(d) with the verdict's type decoded among the product's labelled defect types (the inference "
                "default since this row; rows above decode it freely)", None),
    "n2500-replay": ("Stage 0 2 500 steps, then Stage 1 500 and Stage 2 400 steps with 25 % of every batch "
                     "replaying Stage 0 notes (not shipped; type decoded freely)", None),
    "n2500-replay-notetype": ("the row above, with verdict targets naming the note's type where it names one "
                              "(not shipped)", None),
    "n2500-replay-notetype-s300": ("the row above with Stage 1 300 and Stage 2 500 steps, 20 % note replay "
                                   "(not shipped)", None),
    "n2500-seg-replay": ("Stage 0 2 500 steps, Stage 1 300 steps with 20 % note replay, Stage 2 600 steps without, "
                         "verdict targets naming the note's type [previous shipped]", None),
    "n2500-seg-replay-answer-note": ("the row above with Defect Classification answers naming the note's type where "
                                     "it is an option (Stage 2 rerun from its Stage 1; not shipped)", None),
    "s2-spaced-answers": ("Stage 2 rerun from row n2500-seg-replay's Stage 1 with answers written after a space, "
                          "as the options, the note and the verdict write their words (same tokens; not shipped)", None),
    "s2-spaced-answers-note": ("the row above with Defect Classification answers naming the note's type where it "
                               "is an option (not shipped)", None),
    "s2-spaced-answers-about": ("the row above with the Defect Description and Analysis answers also following the "
                                "note's type (its appearance and consequence) where they are options (not shipped)",
                                None),
    "spaced-answers": ("make train with the recipe of row s2-spaced-answers-note from scratch: its tokenizer, fitted "
                       "on the spaced answers, changes every stage (not shipped)", None),
    "c-typed-notes": ("(c) for the shipped recipe: Stages 0 and 1 of row typed-notes, Stage 2 without domain "
                      "knowledge in any prompt (the step from c to d: what the knowledge in training adds)", None),
    "typed-notes": ("the recipe of row spaced-answers with Stage 0 notes 85 % above the threshold and 95 % of those "
                    "naming a type (74 % and 80 % before), so that the type copy forms [previous shipped]", None),
    "products": ("row typed-notes with the note also naming the known product the image looks most like (a vote "
                 "of pretrained whole-image descriptors of every product's normal images; --product-note yes), "
                 "Stages 1 and 2 rerun from its Stage 0, which never saw a product line (not shipped)", None),
    "note-questions": ("row products with its Stage 0 resumed for 600 steps on notes naming a product, half of "
                       "them followed by one MMAD question the note answers (--note-question-share 0.5), then "
                       "Stages 1 and 2 (not shipped: 3 100 Stage 0 steps do not fit make train's hour)", None),
    "product-questions": ("make train with the recipe of row note-questions fitted into the hour: Stage 0 2 300 "
                          "steps, 1 700 on plain notes, then 600 naming a product, half with a question (previous "
                          "shipped)", None),
    "balanced-questions": ("make train with row note-questions' Stage 0 in one run (2 500 plain note steps, then 600 "
                           "naming a product, half with a question), the questions balanced: every kind equally often, "
                           "Anomaly Detection answered yes and no equally often (--note-balanced-questions yes); "
                           "boxes refined at the validation-chosen cut 0.6 (previous shipped)",
                           None),
    "sharper-hints": ("make train with type hints from deeper exemplar blocks (4, 10, 15) and closer crops (a fifth "
                      "of the side), Stage 0's 600 product notes asking each kind with its own weight (AD 1, OC 1.5, "
                      "DC 1, DL 1, DD 2, DA 2) and 15 % of them naming an invented product; steps as row "
                      "balanced-questions (previous shipped)", None),
    "evidence-folds": ("make train with the recipe of row sharper-hints on evidence version 7: normal training "
                       "images' maps from banks of the other 7 of 8 folds (halves before, which made their notes say "
                       "'above' twice as often), and type hints from exemplar block 15 alone (previous "
                       "shipped)", None),
    "cell-levels": ("make train with the recipe of row evidence-folds on evidence version 8: prefilter banks divide "
                    "patch distances by each canvas cell's held-out normal level where that tells the category's "
                    "labelled training defects apart at least as well (9 of 12 categories; not screw, capsule, "
                    "cable), training normals' maps by leave-one-out levels; the threshold's above/below call is "
                    "right for 91.7 % of the 192 test images (85.9 %; previous shipped; row (d) of the ladder, "
                    "whose rows all train Stage 2 for 600 steps)", None),
    "sft-1000": ("make train with the recipe of row cell-levels and 1 000 Stage 2 steps (600 before), chosen on the "
                 "validation split (guided average 86.5 against 84.5, paired interval +0.3..+4.0; shipped since "
                 "this row)", None),
    "cue-answers-only": ("row evidence-folds with Stage 2 learning only the answers of prompts that ask a defect "
                         "question: their reasoning, verdict and region are context, not targets "
                         "(--sft-cue-answers-only yes; Stage 2 rerun from row evidence-folds' Stage 1)", None),
    "sft-note-replay": ("row evidence-folds with a fifth of every Stage 2 batch replaying Stage 0 notes (product notes, "
                        "half with a question, 15 % of them naming an invented product; --sft-note-replay 0.2; "
                        "Stage 2 rerun from row evidence-folds' Stage 1)", None),
    "unseen-products": ("row cell-levels with 30 % of Stage 2's examples asking Object Classification calling the "
                        "product by a listed invented name in the note and the options, so that the answer is read "
                        "from the note (the first form of --sft-unseen-product-share 0.3, which still offered the "
                        "held-out products as wrong options; Stage 2 rerun from row cell-levels' Stage 1; not "
                        "shipped)", None),
    "sharper-hints-verdict-first": ("the checkpoint of row sharper-hints answering after its question-free verdict: "
                                    "reasoning, verdict and region written without the question, the answer after "
                                    "them with it (--verdict-first)", None),
}
#: Question subsets: (question file, normal and defective images per category). The small ``test``
#: and ``heldout`` subsets score every row since the first session (one standard error about 4.5
#: and 7 points); the wide ones, four times the images, tell the stage ladder's steps from noise.
SUBSETS = {"test": ("mmad.json", 1), "heldout": ("mmad_heldout.json", 2), "verdicts": ("mmad.json", 4),
           "test_wide": ("mmad.json", 4), "heldout_wide": ("mmad_heldout.json", 8)}
SUBSET_TITLES = {"test": "Synthetic test split (in-distribution categories)",
                 "heldout": "Held-out categories",
                 "test_wide": "Wide synthetic test split (4 + 4 images per in-distribution category)",
                 "heldout_wide": "Wide held-out categories (8 + 8 images per held-out category)"}
#: The rows of the stage ladder, as the issue lists them, every one with Stage 2's 600 steps; then
#: the shipped checkpoint, (d) with 1 000.
LADDER = {"a": "a", "b": "b", "c": "c", "d": "cell-levels", "shipped": "sft-1000"}
#: How the answerer picks an option (``judo eval mmad --mode``): the letter its generated answer
#: text matches, its answer decoded as one of the options' texts, or the option whose text is most
#: likely after its own reasoning.
MODE_SUFFIX = {"generate": "", "guided": ".guided", "likelihood": ".likelihood"}
MODE_TITLES = {"generate": "generated answer text matched to an option",
               "guided": "the answer decoded as one of the options' texts (guided decoding)",
               "likelihood": "the option whose text the model finds most likely after its own reasoning"}


def subset_file(data: Path, name: str) -> str:
    """A balanced subset (per category: k normal + k defective images) of one question file."""
    source, per_class = SUBSETS[name]
    out = f"mmad_ablation_{name}.json"
    records = json.loads((data / source).read_text())
    chosen, counts = {}, {}
    for key, record in records.items():
        slot = (key.split("/")[1], "good" in key)
        if counts.get(slot, 0) < per_class:
            counts[slot] = counts.get(slot, 0) + 1
            chosen[key] = record
    (data / out).write_text(json.dumps(chosen, indent=1))
    return out


def cmd_train(args) -> None:
    for row in args.rows:
        flags = ROWS[row][1]
        if flags is None:
            continue
        flags = [f.replace("{main}", str(args.main)) for f in flags]
        command = [sys.executable, "-m", "pipelines.cli", "train", "--stage", "all", "--data", str(args.data),
                   "--out", str(args.runs / row), *flags, *args.extra]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)


def verdict_latency(answerer, data: Path, file: str, count: int) -> dict:
    """Seconds per verdict (think + defect + region, no question) of the reasoner, evidence cached."""
    import torch

    from judo_model.mmad.format import MMADDataset

    judo = answerer.judo
    items = list(MMADDataset(data, file))[:count]
    times = []
    for item in items:
        start = time.perf_counter()
        with torch.inference_mode():
            judo.generate(item.template_paths(1)[0], item.image_path, questions=None, max_new_tokens=64)
        times.append(time.perf_counter() - start)
    times = times[1:] or times  # the first call pays one-off allocation
    return {"images": len(times), "p50_ms": round(1000 * statistics.median(times), 1),
            "p90_ms": round(1000 * sorted(times)[int(0.9 * (len(times) - 1))], 1), "threads": torch.get_num_threads()}


def cmd_eval(args) -> None:
    import torch

    from judo_model.mmad.evaluate import evaluate, write_result
    from judo_model.mmad.format import MMADDataset
    from judo_model.training.answerer import load_juxtaposed_answerer

    torch.set_num_threads(args.threads)
    answerer = load_juxtaposed_answerer(args.checkpoint, args.data, name=f"judo-{args.row}", mode=args.mode,
                                        verdict_first=args.verdict_first)
    result = {"row": args.row, "description": ROWS[args.row][0], "checkpoint": str(args.checkpoint),
              "recipe": recipe_summary(args.checkpoint), "mode": args.mode, "verdict_first": args.verdict_first}
    suffix = MODE_SUFFIX[args.mode]
    for name in args.subsets:
        file = subset_file(args.data, name)
        start = time.time()
        evaluation = evaluate(MMADDataset(args.data, file), answerer, shots=1, use_domain_knowledge=False)
        answers_path = RESULTS / f"{args.row}_{name}{suffix}.json"
        write_result(evaluation, answers_path)
        table = evaluation.table
        result[name] = {
            "accuracy": {c: round(table.cell("Average", c), 1) for c in table.columns},
            "questions": len(evaluation.answers),
            "dropped": len(table.dropped),
            "grounding": evaluation.grounding.as_dict(),
            "seconds": round(time.time() - start, 1),
        }
        print(args.row, name, json.dumps(result[name]), flush=True)
    if args.latency:
        result["latency"] = verdict_latency(answerer, args.data, subset_file(args.data, "test"), args.latency)
        print("latency", result["latency"], flush=True)
    save_row(RESULTS / f"row_{args.row}{suffix}.json", result)


def save_row(path: Path, result: dict) -> None:
    """Write one row's result, keeping the subsets (and latency) an earlier run on other subsets scored."""
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    kept = {key: value for key, value in earlier.items() if key in SUBSETS or key == "latency"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**kept, **result}, indent=1))


def recipe_summary(checkpoint: Path) -> str:
    """Evidence route and steps of a ``judo train`` checkpoint, for the report."""
    from judo_model.training.pipeline import read_training_log

    log = read_training_log(checkpoint)
    recipe = log.get("recipe", {})
    steps = ", ".join(f"{s['stage']} {len(s.get('steps', []))}" for s in log.get("stages", []))
    return f"route {recipe.get('evidence_route') or 'none'}; steps: {steps or 'n/a'}"


def cmd_verdicts(args) -> None:
    import numpy as np
    import torch

    from judo_model.data.knowledge import category_facts
    from judo_model.imaging import load_image, load_mask
    from judo_model.mmad.format import MMADDataset
    from judo_model.output import boxes_to_mask
    from judo_model.training.answerer import load_juxtaposed_answerer
    from judo_model.training.evidence import hottest_boxes

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
    import numpy as np
    import torch

    from judo_model.imaging import load_image, load_mask
    from judo_model.mmad.format import MMADDataset
    from judo_model.training.answerer import load_juxtaposed_answerer
    from judo_model.training.evidence import REGION_CUT, refine_region

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
    from actors.features import BackboneConfig
    from actors.references import EXEMPLAR_BLOCKS, EXEMPLAR_CROP_FRACTION, EXEMPLAR_VOTES, DefectExemplars
    from judo_model.data.knowledge import defect_title
    from judo_model.imaging import load_image
    from judo_model.training.evidence import load_evidence, prepare_evidence

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
    import torch

    from judo_model.inference import JudoModel
    from judo_model.output import parse_output
    from judo_model.training.data import defect_titles, load_examples
    from judo_model.training.note_reading import NoteReadingSampler
    from judo_model.training.pipeline import prompt_options_of

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
    from dataclasses import asdict

    from judo_model.data import questions as mmad
    from judo_model.output import parse_output
    from judo_model.training.data import defect_titles
    from judo_model.training.note_reading import NoteReadingSampler
    from judo_model.training.pipeline import read_training_log
    from judo_model.training.recipe import Recipe

    recipe = {**asdict(Recipe()), **read_training_log(checkpoint).get("recipe", {})}
    kinds = {mmad.ANOMALY_QUESTION: "Anomaly Detection", mmad.OBJECT_QUESTION: "Object Classification",
             mmad.CLASSIFICATION_QUESTION: "Defect Classification", mmad.LOCALIZATION_QUESTION: "Defect Localization",
             mmad.DESCRIPTION_QUESTION: "Defect Description", mmad.ANALYSIS_QUESTION: "Defect Analysis"}
    sampler = NoteReadingSampler(defect_titles(examples), seed=NOTES_SEED, above_share=recipe["note_above_share"],
                                 hint_share=recipe["note_hint_share"],
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


def cmd_random(args) -> None:
    from judo_model.mmad.answerers import RandomAnswerer
    from judo_model.mmad.evaluate import evaluate
    from judo_model.mmad.format import MMADDataset

    draw = {"row": "random", "description": "random letter (one draw, seed 0)", "checkpoint": "baseline:random"}
    chance = {"row": "chance", "checkpoint": "baseline:random",
              "description": f"chance: the expected accuracy of a uniform guess (mean of {args.draws} random-letter draws)"}
    for name in args.subsets:
        dataset = MMADDataset(args.data, subset_file(args.data, name))
        tables = [evaluate(dataset, RandomAnswerer(seed)).table for seed in range(args.draws)]
        questions = sum(len(item.record.conversation) for item in dataset)
        draw[name] = {"accuracy": {c: round(tables[0].cell("Average", c), 1) for c in tables[0].columns},
                      "questions": questions, "dropped": len(tables[0].dropped)}
        chance[name] = {"accuracy": {c: round(statistics.fmean(t.cell("Average", c) for t in tables), 1)
                                     for c in tables[0].columns},
                        "questions": questions, "dropped": 0,
                        "average_spread": round(statistics.stdev(t.cell("Average", "Average") for t in tables), 1)}
        print(name, "one draw", draw[name]["accuracy"]["Average"], "expected", chance[name]["accuracy"]["Average"],
              "spread of one draw", chance[name]["average_spread"], flush=True)
    for row in (draw, chance):
        save_row(RESULTS / f"row_{row['row']}.json", row)


def image_groups(answers: list[dict]) -> dict[str, list[dict]]:
    """Answer rows by image, in order: the unit a paired bootstrap resamples."""
    groups: dict[str, list[dict]] = {}
    for answer in answers:
        groups.setdefault(answer["image"], []).append(answer)
    return groups


def resampled_averages(rows: list[list[dict]], resamples: int, seed: int = 0):
    """Each row's MMAD average on its own questions and on ``resamples`` draws of the images with
    replacement, every row scored on the same draw (rows must answer the same images)."""
    import numpy as np

    from judo_model.mmad.scorer import score_answers

    groups = [image_groups(answers) for answers in rows]
    if any(set(g) != set(groups[0]) for g in groups):
        raise SystemExit("the answer files do not cover the same images")
    keys = sorted(groups[0])

    def averages(chosen: list[str]) -> list[float]:
        return [score_answers([row for key in chosen for row in g[key]]).cell("Average", "Average") for g in groups]

    rng = np.random.default_rng(seed)
    draws = np.array([averages([keys[i] for i in rng.integers(len(keys), size=len(keys))])
                      for _ in range(resamples)])
    return averages(keys), draws


def interval(values) -> tuple[float, float]:
    import numpy as np

    low, high = np.percentile(values, [2.5, 97.5])
    return round(float(low), 1), round(float(high), 1)


def cmd_compare(args) -> None:
    """Each ladder row's average and each step's gain, with 95 % intervals from resampled images."""
    results = {"rows": [], "steps": []}
    for subset in args.subsets:
        for mode, suffix in MODE_SUFFIX.items():
            paths = {row: RESULTS / f"{name}_{subset}{suffix}.json" for row, name in LADDER.items()}
            present = [row for row, path in paths.items() if path.is_file()]
            if not present:
                continue
            answers = [json.loads(paths[row].read_text()) for row in present]
            points, draws = resampled_averages(answers, args.resamples)
            images = len(image_groups(answers[0]))
            for i, row in enumerate(present):
                low, high = interval(draws[:, i])
                results["rows"].append({"subset": subset, "mode": mode, "row": row, "average": round(points[i], 1),
                                        "low": low, "high": high, "images": images})
            steps = list(zip(present, present[1:])) + [("a", last) for last in ("d", "shipped") if
                                                        {"a", last} <= set(present)]
            for first, second in steps:
                i, j = present.index(first), present.index(second)
                low, high = interval(draws[:, j] - draws[:, i])
                results["steps"].append({"subset": subset, "mode": mode, "from": first, "to": second,
                                         "difference": round(points[j] - points[i], 1), "low": low, "high": high,
                                         "images": images, "resamples": args.resamples})
                print(json.dumps(results["steps"][-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ladder_steps.json").write_text(json.dumps(results, indent=1))


BASELINES = ("chance", "random")
COLUMNS = ("Anomaly Detection", "Defect Classification", "Defect Localization", "Defect Description",
           "Defect Analysis", "Object Classification", "Object Analysis", "Average")


def cmd_report(args) -> None:
    if args.notes_file:
        args.note = json.loads(args.notes_file.read_text()) + args.note
    rows = []
    for name in (*BASELINES, *ROWS):
        for mode, suffix in MODE_SUFFIX.items():
            path = RESULTS / f"row_{name}{suffix}.json"
            if path.is_file():
                row = {"mode": mode, **json.loads(path.read_text())}
                row["description"] = ROWS[name][0] if name in ROWS else row["description"]  # ROWS is current
                rows.append(row)
    DOC_JSON.write_text(json.dumps({"rows": rows, "notes": args.note}, indent=1))
    lines = ["# JUDO ablation (tiny preset, synthetic data)", "",
             "Generated by `benchmarks/judo_ablation.py report` from `benchmarks/results/judo_ablation/`.",
             "MMAD 1-shot protocol through `judo_model.mmad.evaluate` (no domain knowledge in the prompt); "
             "accuracy in percent; IoU = mean IoU of the predicted boxes with the mask on defective images.", ""]
    steps_path = RESULTS / "ladder_steps.json"
    if steps_path.is_file():
        ladder = json.loads(steps_path.read_text())
        chance = json.loads((RESULTS / "row_chance.json").read_text()) if (RESULTS / "row_chance.json").is_file() else {}
        lines += ["## Stage ladder on the wide subsets, with 95 % intervals", "",
                  "Rows " + ", ".join(f"({k}) = row {v}" for k, v in LADDER.items()) + "; (a)-(d) train Stage 2 "
                  "for 600 steps, the shipped checkpoint for 1 000; (e) is Stage 3, off in the shipped recipe. Intervals resample the images with replacement, every row on the "
                  "same draw, so a step's interval above 0 is a gain that is not noise. Chance: the expected "
                  "average of a uniform guess.", "",
                  "| subset | mode | chance | " + " | ".join(f"({k})" for k in LADDER) + " |",
                  "|---|---|---|" + "---|" * len(LADDER)]
        for subset in dict.fromkeys(r["subset"] for r in ladder["rows"]):
            for mode in MODE_SUFFIX:
                cells = {r["row"]: r for r in ladder["rows"] if r["subset"] == subset and r["mode"] == mode}
                if not cells:
                    continue
                level = chance.get(subset, {}).get("accuracy", {}).get("Average")
                lines.append(f"| {subset} | {mode} | {'–' if level is None else level} | " + " | ".join(
                    f"{cells[k]['average']:.1f} ({cells[k]['low']:.1f}-{cells[k]['high']:.1f})" if k in cells else "–"
                    for k in LADDER) + " |")
        lines += ["", "| subset | mode | step | gain | 95 % interval | images |", "|---|---|---|---|---|---|"]
        for step in ladder["steps"]:
            lines.append(f"| {step['subset']} | {step['mode']} | ({step['from']}) -> ({step['to']}) | "
                         f"{step['difference']:+.1f} | {step['low']:+.1f} .. {step['high']:+.1f} | {step['images']} |")
        lines.append("")
    subsets = ("test_wide", "heldout_wide", "test", "heldout")
    for subset, mode in [(subset, mode) for subset in subsets[:2] for mode in MODE_SUFFIX] + \
            [(subset, mode) for mode in MODE_SUFFIX for subset in subsets[2:]]:
        title = SUBSET_TITLES[subset]
        chosen = [row for row in rows if subset in row and (row["mode"] == mode or row["row"] in BASELINES)]
        if not any(row["mode"] == mode for row in chosen):
            continue
        lines += [f"## {title}: {MODE_TITLES[mode]}", "",
                  "| row | " + " | ".join(c.replace("Defect ", "Def. ").replace("Object ", "Obj. ") for c in COLUMNS)
                  + " | IoU | questions |",
                  "|---" * (len(COLUMNS) + 3) + "|"]
        for row in chosen:
            acc = row[subset]["accuracy"]
            iou = (row[subset].get("grounding") or {}).get("mean_iou")
            cells = [f"{acc[c]:.1f}" if c in acc else "–" for c in COLUMNS]
            recipe = f" ({row['recipe']})" if row.get("recipe") else ""
            lines.append(f"| ({row['row']}) {row['description']}{recipe} | " + " | ".join(cells)
                         + f" | {'–' if iou is None else f'{iou:.2f}'} | {row[subset]['questions']} |")
        lines.append("")
    verdict_rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("verdicts_*.json"))]
    if verdict_rows:
        lines += ["## Verdicts without questions (Stage 1 evidence routes)", "",
                  "4 normal + 4 defective test images per in-distribution category; the reasoner writes "
                  "its verdict, type and region with no question in the prompt. Refined IoU: boxes cut "
                  "down to the anomaly map's hot pixels (the verdict's mask).", "",
                  "| checkpoint | recipe | images | verdict acc. | type acc. (defective) | box IoU | refined IoU "
                  "| note's box kept | note's type kept |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in verdict_rows:
            followed = [row.get("note_box_followed"), row.get("note_type_followed")]
            lines.append(f"| {row['name']} | {row['recipe']} | {row['images']} | {row['verdict_accuracy']:.1f} | "
                         f"{row['type_accuracy']:.1f} | {row['box_iou']:.3f} | {row['refined_iou']:.3f} | "
                         + " | ".join("–" if v is None else f"{v:.1f}" for v in followed) + " |")
        lines.append("")
    note_rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("notes_*.json"))]
    if note_rows:
        lines += ["## Reading the note (Stage 0's copy, text only)", "",
                  "The same 100 fresh text-only notes (Stage 0's sampler, seed "
                  f"{NOTES_SEED}), decoded freely: how often the checkpoint repeats the note's verdict, its box "
                  "exactly (of the notes above the threshold) and its type (of those naming one).", "",
                  "| checkpoint | verdict | box copied | type copied |", "|---|---|---|---|"]
        for row in note_rows:
            lines.append(f"| {row['name']} | {row['verdict']}/{row['notes']} | {row['box']}/{row['above']} | "
                         f"{row['type']}/{row['hinted']} |")
        lines.append("")
        asked = [row for row in note_rows if "questions" in row]
        if asked:
            kinds = sorted({kind for row in asked for kind in row["questions"]})
            lines += ["Checkpoints trained on notes naming a product read notes that name one (the rows above) "
                      "and answer one MMAD question per fresh note (the same count, seed "
                      f"{NOTES_SEED}; answer decoded among the options): right / asked.", "",
                      "| checkpoint | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
            for row in asked:
                cells = [row["questions"].get(kind) for kind in kinds]
                lines.append(f"| {row['name']} | " + " | ".join(f"{c[0]}/{c[1]}" if c else "–" for c in cells) + " |")
            lines.append("")
    latency = [r for r in rows if "latency" in r and r["mode"] == "generate"]
    if latency:
        lines += ["## Verdict latency (reasoner only, evidence cached, CPU, shared 2-core machine)", ""]
        for row in latency:
            lat = row["latency"]
            lines.append(f"- ({row['row']}): p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms over {lat['images']} "
                         f"verdicts, {lat['threads']} torch thread(s)")
        lines.append("")
    if args.note:
        lines += ["## Notes", "", *[f"- {n}" for n in args.note], ""]
    DOC_MD.write_text("\n".join(lines))
    print(DOC_MD.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train rows a-c (and c-heat) with judo train")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--runs", type=Path, required=True)
    train.add_argument("--rows", nargs="+", default=["c", "a", "b"])
    train.add_argument("--main", type=Path, help="the shipped recipe's run folder (judo train --stage all --out)")
    train.add_argument("extra", nargs="*", help="extra judo train flags, after --")
    train.set_defaults(func=cmd_train)
    ev = commands.add_parser("eval", help="score one row's checkpoint")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--row", choices=list(ROWS), required=True)
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--subsets", nargs="+", default=["test", "heldout"])
    ev.add_argument("--latency", type=int, default=0, help="also time N verdicts")
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--mode", choices=list(MODE_SUFFIX), default="generate")
    ev.add_argument("--verdict-first", action="store_true", help="answers written after the question-free verdict")
    ev.set_defaults(func=cmd_eval)
    verdicts = commands.add_parser("verdicts", help="verdict, type and region of one checkpoint, no questions")
    verdicts.add_argument("--data", type=Path, required=True)
    verdicts.add_argument("--name", required=True)
    verdicts.add_argument("--checkpoint", type=Path, required=True)
    verdicts.add_argument("--threads", type=int, default=1)
    verdicts.set_defaults(func=cmd_verdicts)
    cut = commands.add_parser("region-cut", help="choose the box refinement's cut on the validation split")
    cut.add_argument("--data", type=Path, required=True, help="the training data (its mmad_val.json and evidence)")
    cut.add_argument("--checkpoint", type=Path, required=True)
    cut.add_argument("--threads", type=int, default=1)
    cut.set_defaults(func=cmd_region_cut)
    hints = commands.add_parser("hint-sweep", help="choose the defect exemplars' blocks and crop on train and val")
    hints.add_argument("--data", type=Path, required=True)
    hints.add_argument("--top", type=int, default=12, help="rows of the printed table")
    hints.set_defaults(func=cmd_hint_sweep)
    notes = commands.add_parser("notes", help="Stage 0 copy rates of one checkpoint on fresh text-only notes")
    notes.add_argument("--data", type=Path, required=True, help="the training data (for its defect titles)")
    notes.add_argument("--name", required=True)
    notes.add_argument("--checkpoint", type=Path, required=True)
    notes.add_argument("--count", type=int, default=100)
    notes.add_argument("--threads", type=int, default=1)
    notes.set_defaults(func=cmd_notes)
    rnd = commands.add_parser("random", help="score the random-letter baseline on the same subsets")
    rnd.add_argument("--data", type=Path, required=True)
    rnd.add_argument("--subsets", nargs="+", default=["test", "heldout", "test_wide", "heldout_wide"])
    rnd.add_argument("--draws", type=int, default=200, help="random-letter draws averaged into the chance row")
    rnd.set_defaults(func=cmd_random)
    compare = commands.add_parser("compare", help="each ladder step's gain with a paired bootstrap interval")
    compare.add_argument("--subsets", nargs="+", default=["test_wide", "heldout_wide"])
    compare.add_argument("--resamples", type=int, default=2000)
    compare.set_defaults(func=cmd_compare)
    report = commands.add_parser("report", help="write docs/judo_ablation.md and .json")
    report.add_argument("--note", action="append", default=[])
    report.add_argument("--notes-file", type=Path, help="a JSON list of notes (e.g. the current report's notes)")
    report.set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
