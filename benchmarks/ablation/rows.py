"""The ablation's rows, question subsets and result files, shared by every sub-command."""

from __future__ import annotations

import json
from pathlib import Path

from judo_model.runtime.inputs import read_training_log

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "judo_ablation"
DOC_MD = ROOT / "docs" / "judo_ablation.md"
DOC_JSON = ROOT / "docs" / "judo_ablation.json"

ROWS = {
    "a": ("QA SFT only, no reference image", ["--no-reference", "--evidence-route", "none",
                                              "--sft-domain-knowledge-prob", "0", "--grpo-steps", "0"]),
    "b": ("+ juxtaposed normal reference", ["--evidence-route", "none", "--sft-domain-knowledge-prob", "0",
                                            "--grpo-steps", "0"]),
    # (c) shares Stage 1 with the shipped run (its OUT/stages/seg) and differs from (d) only in
    # having no domain knowledge in its QA SFT.
    "c": ("+ Stages 0 and 1 on pretrained evidence (note, heat map + zoomed crop), Stage 2 without domain "
          "knowledge",
          ["--stage", "sft", "--init", "{main}/stages/seg", "--sft-domain-knowledge-prob", "0"]),
    "c-heat": ("(c) with the heat map only as evidence (route comparison)",
               ["--evidence-route", "heat", "--sft-domain-knowledge-prob", "0", "--grpo-steps", "0"]),
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



def save_row(path: Path, result: dict) -> None:
    """Write one row's result, keeping the subsets (and latency) an earlier run on other subsets scored."""
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    kept = {key: value for key, value in earlier.items() if key in SUBSETS or key == "latency"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**kept, **result}, indent=1))


def recipe_summary(checkpoint: Path) -> str:
    """Evidence route and steps of a ``judo train`` checkpoint, for the report."""
    log = read_training_log(checkpoint)
    recipe = log.get("recipe", {})
    steps = ", ".join(f"{s['stage']} {len(s.get('steps', []))}" for s in log.get("stages", []))
    return f"route {recipe.get('evidence_route') or 'none'}; steps: {steps or 'n/a'}"
