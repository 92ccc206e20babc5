"""``judo train``: the JUDO recipe (Stage 0 note reading -> Stage 1 seg -> Stage 2 SFT -> Stage 3 GRPO) on one folder.

Every stage writes a standard checkpoint folder. ``--stage all`` chains them:
``OUT/stages/note``, ``OUT/stages/seg``, ``OUT/stages/sft`` and the final model in ``OUT`` itself, with
``judo_training.json`` (recipe, prompt options, per-stage curves and seconds) and a PNG
of the loss / reward curves.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from judo_model.training.data import IMAGE_SIDE, PromptOptions, defect_titles, load_examples, tokenizer_corpus_texts
from judo_model.training.encoding import CachedEncoder
from judo_model.training.evidence import route_shows_note
from judo_model.training.recipe import STAGES, Recipe
from judo_model.training.note_reading import NoteReadingSampler
from judo_model.training.sft import SFTConfig, train_on_pairs, train_supervised

TRAINING_FILE = "judo_training.json"


@dataclass
class TrainingLog:
    recipe: dict
    data: str
    image_side: int = IMAGE_SIDE
    stages: list[dict] = field(default_factory=list)

    def write(self, directory: Path) -> None:
        (directory / TRAINING_FILE).write_text(json.dumps(asdict(self), indent=1))


def read_training_log(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / TRAINING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def prompt_options(recipe: Recipe, with_knowledge: bool) -> PromptOptions:
    return PromptOptions(reference=recipe.reference, evidence_route=recipe.evidence_route,
                         domain_knowledge_prob=recipe.domain_knowledge_prob if with_knowledge else 0.0,
                         product_note=recipe.product_note)


def prompt_options_of(checkpoint: str | Path) -> PromptOptions:
    """How a checkpoint was prompted in training (what inference must show it)."""
    recipe = read_training_log(checkpoint).get("recipe", {})
    return PromptOptions(reference=recipe.get("reference", True), evidence_route=recipe.get("evidence_route"),
                         product_note=recipe.get("product_note", False))


def _build_model(data_dir: Path, seed: int):
    from judo_model.modeling import load_model
    from judo_model.processing import tokenizer_corpus

    knowledge = data_dir / "domain_knowledge.json"
    corpus = list(tokenizer_corpus(knowledge if knowledge.is_file() else None, tokenizer_corpus_texts(data_dir)))
    return load_model("tiny", corpus=corpus, seed=seed)


def plot_curves(stages: list[dict], path: str | Path) -> Path:
    """One panel per stage: loss for the supervised stages, rewards for GRPO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in stages if s.get("steps")]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(5 * max(1, len(stages)), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for name, values in stage["values"].items():
            if name == "lr":
                continue
            ax.plot(stage["steps"], values, label=name, linewidth=1)
        ax.set_title(f"{stage['stage']} ({stage['seconds']:.0f} s)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train(data_dir: str | Path, out_dir: str | Path, stage: str = "all", recipe: Recipe | None = None,
          init: str | Path | None = None, curves_png: str | Path | None = None,
          train_file: str = "mmad_train.json") -> TrainingLog:
    """Run ``stage`` (seg, sft, grpo or all) and save the resulting checkpoint in ``out_dir``."""
    from judo_model.modeling import load_checkpoint, save_checkpoint
    from judo_model.training.evidence import load_evidence, prepare_evidence

    if stage not in (*STAGES, "all"):
        raise ValueError(f"stage must be one of {STAGES + ('all',)}, got {stage!r}")
    recipe = recipe or Recipe()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    examples = load_examples(data_dir, train_file)
    evidence = None
    if recipe.evidence_route:
        prepare_evidence(data_dir, progress=lambda c: print(f"evidence: {c}", flush=True))
        evidence = load_evidence(data_dir)
    torch.set_num_threads(recipe.threads)  # after the evidence, whose extractor sets its own thread count
    log = TrainingLog(recipe=asdict(recipe), data=str(data_dir))
    if init is not None:
        model, processor = load_checkpoint(init)
        log.stages.extend(read_training_log(init).get("stages", []))
    elif stage == "grpo":
        raise ValueError("GRPO starts from a Stage 2 checkpoint: pass --init (zero advantages otherwise)")
    else:
        model, processor = _build_model(data_dir, recipe.seed)
    encoder = CachedEncoder(processor)
    todo = STAGES if stage == "all" else (stage,)
    stage_dir = out_dir / "stages" if stage == "all" else None
    reads_notes = route_shows_note(recipe.evidence_route)

    def notes_sampler(seed: int, plain: bool = False) -> NoteReadingSampler:
        with_products = recipe.product_note and not plain
        return NoteReadingSampler(defect_titles(examples), seed=seed, above_share=recipe.note_above_share,
                                  hint_share=recipe.note_hint_share,
                                  categories=sorted({e.category for e in examples}) if with_products else None,
                                  question_share=recipe.note_question_share if with_products else 0.0,
                                  question_weights=recipe.note_question_weights or None,
                                  unseen_share=recipe.note_unseen_share if with_products else 0.0,
                                  invented_names=recipe.invented_names)

    def stage0_draw(seed: int):
        """Stage 0's batches: plain notes for ``note_plain_steps`` steps, then the recipe's notes."""
        if not (recipe.product_note and recipe.note_plain_steps > 0):
            return notes_sampler(seed).batch
        plain, full, drawn = notes_sampler(seed, plain=True), notes_sampler(seed + 1), itertools.count()
        return lambda size: (plain if next(drawn) < recipe.note_plain_steps else full).batch(size)

    def replayed_notes(seed: int) -> NoteReadingSampler | None:
        """Stage 0 notes to mix into a later stage (its own seed, so single-stage runs draw the same)."""
        return notes_sampler(seed + 7) if reads_notes else None

    for name in todo:
        start = time.time()
        if name == "note":
            if not reads_notes or recipe.note_steps <= 0:
                print("note: skipped (the prompts carry no evidence note)")
                continue
            config = SFTConfig(recipe.note_steps, recipe.note_batch_size, recipe.note_lr, seed=recipe.seed,
                               min_lr_ratio=1.0)  # constant: the copy circuit forms late (a phase change)
            curve = train_on_pairs(model, processor, stage0_draw(recipe.seed), config, "note", encoder=encoder)
        elif name == "seg":
            if not recipe.evidence_route:
                print("seg: skipped (Stage 1 needs evidence; evidence_route is off)")
                continue
            config = SFTConfig(recipe.seg_steps, recipe.batch_size, recipe.seg_lr, seed=recipe.seed,
                               note_replay=recipe.note_replay, type_from_note=recipe.type_from_note)
            curve = train_supervised(model, processor, examples, prompt_options(recipe, False), evidence, config,
                                     "seg", questions=False, encoder=encoder, notes=replayed_notes(config.seed))
        elif name == "sft":
            config = SFTConfig(recipe.sft_steps, recipe.batch_size, recipe.sft_lr, seed=recipe.seed + 1,
                               single_question=recipe.single_question, replay=recipe.sft_replay,
                               note_replay=recipe.sft_note_replay, type_from_note=recipe.type_from_note,
                               answer_type_from_note=recipe.answer_type_from_note,
                               cue_answers_only=recipe.sft_cue_answers_only,
                               unseen_product_share=recipe.sft_unseen_product_share,
                               invented_names=recipe.invented_names)
            curve = train_supervised(model, processor, examples, prompt_options(recipe, True), evidence, config,
                                     "sft", encoder=encoder, notes=replayed_notes(config.seed))
        else:
            if recipe.grpo_steps <= 0:
                continue
            from judo_model.training.grpo import train_grpo_trl

            if not Path(str(model.config._name_or_path)).is_dir():  # TRL builds its reference model from disk
                tmp = out_dir / "stages" / "grpo_init"
                save_checkpoint(model, processor, tmp)
                model, processor = load_checkpoint(tmp)
            curve = train_grpo_trl(model, processor, examples, prompt_options(recipe, False), evidence,
                                   recipe.grpo_steps, str(out_dir / "stages" / "grpo_trl"),
                                   num_generations=recipe.grpo_generations,
                                   prompts_per_step=recipe.grpo_prompts_per_step, lr=recipe.grpo_lr,
                                   beta=recipe.grpo_beta, temperature=recipe.grpo_temperature,
                                   scale_rewards=recipe.grpo_scale_rewards,
                                   region_truth=recipe.grpo_region_truth, guided=recipe.grpo_guided,
                                   empty_region_reward=recipe.grpo_empty_region_reward, seed=recipe.seed)
        curve.seconds = time.time() - start
        log.stages.append(curve.as_dict())
        print(f"{name}: {curve.seconds:.0f} s", flush=True)
        if stage_dir is not None and name != todo[-1]:
            saved = save_checkpoint(model, processor, stage_dir / name)
            log.write(saved)
            model, processor = load_checkpoint(saved)  # GRPO's reference model is read from this folder
            encoder = CachedEncoder(processor)
    save_checkpoint(model, processor, out_dir)
    shutil.rmtree(out_dir / "stages" / "grpo_trl", ignore_errors=True)
    log.write(out_dir)
    if curves_png is not None:
        plot_curves(log.stages, curves_png)
    return log
