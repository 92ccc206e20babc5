"""Fit one product's prefilter from an MVTec-style folder: calibrated bank, reference index and
defect exemplars from a single backbone pass (what ``judo prefilter fit`` and the demo run).
"""

from __future__ import annotations

from pathlib import Path

from judo_model.data.knowledge import defect_title
from judo_model.data.mvtec import GOOD, discover_categories, image_files
from judo_model.imaging import load_image
from judo_model.prefilter.patchcore import PatchCoreBank, PatchCoreConfig
from judo_model.prefilter.references import REFERENCES_SUBDIR, DefectExemplars, ReferenceIndex
from judo_model.prefilter.scorer import PrefilterScorer
from judo_model.prefilter.selection import select_config

#: folders of a category that hold labelled defect examples, ``<split>/<defect type>/*.png``
#: (``defect_examples`` for a plant's own library; ``train_qa`` in the synthetic data)
DEFECT_EXAMPLE_SPLITS = ("defect_examples", "train_qa")
#: the share of labelled defect examples a fitted bank routes to JUDO, where a product has them
DEFAULT_TARGET_RECALL = 0.9


def labelled_defect_examples(category_dir: str | Path) -> list[tuple[Path, str]]:
    """(image path, defect type) of every labelled defect example in a category folder."""
    found = []
    for split in DEFECT_EXAMPLE_SPLITS:
        folder = Path(category_dir) / split
        if not folder.is_dir():
            continue
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != GOOD):
            found += [(path, label_dir.name) for path in image_files(label_dir)]
    return found


def fit_bank_from_folder(
    data: str | Path,
    category: str | None,
    out: str | Path,
    config: PatchCoreConfig | None = None,
    target_routing_rate: float = 0.05,
    folds: int = 5,
    camera: str | None = None,
    target_recall: float | None = DEFAULT_TARGET_RECALL,
    select: bool = False,
    min_fps: float | None = None,
) -> PrefilterScorer:
    """Fit, calibrate and save one product's bank plus its reference index from an MVTec-style folder.

    Uses ``train/good`` for the bank and the references, ``validation/good`` (if any) for the
    threshold, and labelled defect examples (:data:`DEFECT_EXAMPLE_SPLITS`, if any, labelled by the
    names answers use: :func:`judo_model.data.knowledge.defect_title`) for the reference index's
    defect exemplars and for ``position_norm='auto'``; writes ``out/`` and ``out/references/``. One
    backbone pass serves bank and references. Recall first: with labelled defect examples the
    threshold routes ``target_recall`` of them (cross-validated; None: the routing budget
    ``target_routing_rate`` decides, as it does without examples). ``select``: backbone, canvas size and
    cell levels are chosen first on synthetic defects in held-out ``train/good`` frames
    (:func:`~judo_model.prefilter.selection.select_config`, at least ``min_fps``); the report is saved.
    """
    cats = discover_categories(data, [category] if category else None)
    if len(cats) != 1:
        raise ValueError(f"{data} holds {len(cats)} categories; name one")
    cat = cats[0]
    train = cat.split("train", "good")
    validation = cat.split("validation", "good")
    train_frames = [s.load_image() for s in train]
    report = None
    if select:
        config, report = select_config(train_frames, config, min_fps=min_fps)
    bank = PatchCoreBank(config, product=cat.name, camera=camera)
    embedded = bank.embed(bank.set_canvas_from(train_frames), "embed train/good")
    val = bank.embed([s.load_image() for s in validation]) if validation else None
    examples = labelled_defect_examples(cat.root)
    defect_frames = [load_image(path) for path, _ in examples]
    defects = bank.embed(defect_frames) if examples else None
    scorer = PrefilterScorer.fit_embedded(bank, embedded, val, target_routing_rate, folds, defects,
                                          target_recall=target_recall)
    scorer.bank.selection_report = report.model_dump(mode="json") if report else None
    out = scorer.save(out)
    references = ReferenceIndex.from_embedded(
        cat.name, scorer.bank.config, embedded, [s.sample_id for s in train], [str(s.path) for s in train],
        scorer.bank.embedder.extractor,
    )
    if examples:
        scored = scorer.bank.score_embedded(defects)
        references.defects = DefectExemplars.build(
            cat.name, defect_frames, [scored.anomaly_map(i) for i in range(len(defect_frames))],
            [defect_title(cat.name, label) for _, label in examples],
            [str(path.relative_to(cat.root)) for path, _ in examples])
    references.save(out / REFERENCES_SUBDIR)
    return scorer
