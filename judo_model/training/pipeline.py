"""``judo train``: the JUDO recipe (Stage 0 note reading -> Stage 1 seg -> Stage 2 SFT -> Stage 3 GRPO) on one folder.

Every stage writes a standard checkpoint folder. ``--stage all`` chains them:
``OUT/stages/note``, ``OUT/stages/seg``, ``OUT/stages/sft`` and the final model in ``OUT`` itself, with
``judo_training.json`` (recipe, per-stage curves and seconds) and a PNG of the loss / reward curves.

``tiny`` trains every weight of a model built from scratch; ``qwen2.5-vl-3b`` / ``-7b`` start from a local
Qwen2.5-VL folder (``base``) and train LoRA adapters on the language model's projections (bf16 on CUDA,
float32 on CPU, gradient checkpointing), merged into the saved folder after each stage; a next stage puts
fresh adapters on the merged weights. The data, prompts, evidence and losses are the same for every preset.
``pipelines/ray_training.py`` runs one supervised stage of this module as a Ray Train job (:func:`open_run`,
:class:`judo_model.training.sft.TrainerHooks`).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure

from judo_model.modeling import apply_lora, judo_generation_config, load_checkpoint, load_model, save_checkpoint
from judo_model.presets import get_preset
from judo_model.processing import tokenizer_corpus
from judo_model.runtime.evidence import route_shows_note
from judo_model.runtime.inputs import IMAGE_SIDE, TRAINING_FILE, PromptOptions, read_training_log
from judo_model.training.data import Example, defect_titles, load_examples, tokenizer_corpus_texts
from judo_model.training.encoding import CachedEncoder
from judo_model.training.evidence import load_evidence, prepare_evidence
from judo_model.training.grpo import train_grpo_trl
from judo_model.training.note_reading import NoteReadingSampler
from judo_model.training.recipe import STAGES, Recipe
from judo_model.training.sft import Curve, TrainerHooks, question_pairs, segmentation_pairs, train_on_pairs

#: Seed offset of the Stage 0 notes replayed in Stage 1 (its own sampler, so single-stage runs draw the same).
REPLAY_SEED_OFFSET = 7


@dataclass
class TrainingLog:
    recipe: dict
    data: str
    image_side: int = IMAGE_SIDE
    stages: list[dict] = field(default_factory=list)
    #: the 3B/7B presets: preset, base folder, LoRA settings, dtype; None (not written) for ``tiny``
    model: dict | None = None
    #: a data-parallel run (``pipelines/ray_training.py``): workers, backend, resumed step; None: one process
    distributed: dict | None = None

    def write(self, directory: Path) -> None:
        record = {key: value for key, value in asdict(self).items()
                  if value is not None or key not in ("model", "distributed")}
        (directory / TRAINING_FILE).write_text(json.dumps(record, indent=1))


def prompt_options(recipe: Recipe, with_knowledge: bool) -> PromptOptions:
    """The prompt a stage shows (domain knowledge only in Stage 2's)."""
    return PromptOptions(reference=recipe.reference, evidence_route=recipe.evidence_route,
                         domain_knowledge_prob=recipe.sft.domain_knowledge_prob if with_knowledge else 0.0,
                         product_note=recipe.product_note)


def _build_model(data_dir: Path, seed: int):
    knowledge = data_dir / "domain_knowledge.json"
    corpus = list(tokenizer_corpus(knowledge if knowledge.is_file() else None, tokenizer_corpus_texts(data_dir)))
    return load_model("tiny", corpus=corpus, seed=seed)


def training_dtype() -> torch.dtype:
    """The 3B/7B presets' weights in training: bf16 on CUDA, float32 on CPU."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def load_for_training(preset: str, path: str | Path):
    """(model, processor) of a checkpoint folder, ready for a stage: ``tiny`` as saved (float32, every
    weight trains); a 3B/7B preset in :func:`training_dtype`, on CUDA when there is one, with gradient
    checkpointing, greedy JUDO decoding and LoRA (the preset's rank, alpha, dropout) on the language
    model's projections."""
    spec = get_preset(preset)
    if spec.from_scratch:
        return load_checkpoint(path)
    model, processor = load_model(preset, path=path, dtype=training_dtype())
    model.generation_config = judo_generation_config(processor)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if torch.cuda.is_available():
        model = model.to("cuda")
    return apply_lora(model, spec), processor


def model_record(preset: str, base: str | Path | None) -> dict | None:
    """What ``judo_training.json`` records about a 3B/7B run's model (None for ``tiny``)."""
    spec = get_preset(preset)
    if spec.from_scratch:
        return None
    return {"preset": preset, "base": None if base is None else str(base), "dtype": str(training_dtype()),
            "lora": {"rank": spec.lora_rank, "alpha": spec.lora_alpha, "dropout": spec.lora_dropout},
            "gradient_checkpointing": True}


def plot_curves(stages: list[dict], path: str | Path) -> Path:
    """One panel per stage: loss for the supervised stages, rewards for GRPO."""
    stages = [s for s in stages if s.get("steps")]
    fig = Figure(figsize=(5 * max(1, len(stages)), 3.6))
    axes = fig.subplots(1, max(1, len(stages)), squeeze=False)
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
    return path


def note_sampler(recipe: Recipe, examples: list[Example], seed: int, with_products: bool) -> NoteReadingSampler:
    """Stage 0's notes; ``with_products``: naming a product, some with a question, some invented."""
    note = recipe.note
    return NoteReadingSampler(defect_titles(examples), seed=seed, above_share=note.above_share,
                              hint_share=note.hint_share,
                              categories=sorted({e.category for e in examples}) if with_products else None,
                              question_share=note.question_share if with_products else 0.0,
                              question_weights=note.question_weights or None,
                              unseen_share=note.unseen_share if with_products else 0.0)


def note_batches(recipe: Recipe, examples: list[Example]):
    """Stage 0's batches: with ``product_note``, plain notes for ``note.plain_steps`` steps, then product notes."""
    seed, plain_steps = recipe.seed, recipe.note.plain_steps
    if not (recipe.product_note and plain_steps > 0):
        return note_sampler(recipe, examples, seed, recipe.product_note).batch
    plain = note_sampler(recipe, examples, seed, False)
    full = note_sampler(recipe, examples, seed + 1, True)
    drawn = itertools.count()
    return lambda size: (plain if next(drawn) < plain_steps else full).batch(size)


class Stages:
    """One run's model and data; each method trains one stage in place (None: skipped). ``hooks`` (a runner's:
    ``pipelines/ray_training.py``) checkpoint and resume the supervised stages' trainer."""

    def __init__(self, recipe: Recipe, examples: list[Example], evidence, model, processor, out_dir: Path,
                 preset: str = "tiny", hooks: TrainerHooks | None = None):
        self.recipe, self.examples, self.evidence, self.out_dir = recipe, examples, evidence, out_dir
        self.preset, self.hooks = preset, hooks
        self.reads_notes = route_shows_note(recipe.evidence_route)
        self.load(model, processor)

    def load(self, model, processor) -> None:
        self.model, self.processor, self.encoder = model, processor, CachedEncoder(processor)

    def reload(self, directory: Path) -> None:
        """Continue from a saved stage (a 3B/7B preset: fresh LoRA adapters on its merged weights)."""
        self.load(*load_for_training(self.preset, directory))

    def note(self) -> Curve | None:
        if not self.reads_notes or self.recipe.note.steps <= 0:
            print("note: skipped (the prompts carry no evidence note)")
            return None
        return train_on_pairs(self.model, self.processor, note_batches(self.recipe, self.examples), self.recipe.note,
                              "note", encoder=self.encoder, hooks=self.hooks, seed=self.recipe.seed)

    def seg(self) -> Curve | None:
        recipe = self.recipe
        if not recipe.evidence_route:
            print("seg: skipped (Stage 1 needs evidence; evidence_route is off)")
            return None
        notes = (note_sampler(recipe, self.examples, recipe.seed + REPLAY_SEED_OFFSET, recipe.product_note)
                 if self.reads_notes else None)
        draw = segmentation_pairs(self.examples, prompt_options(recipe, False), self.evidence, recipe.seg,
                                  recipe.seed, recipe.type_from_note, notes)
        return train_on_pairs(self.model, self.processor, draw, recipe.seg, "seg", encoder=self.encoder,
                              hooks=self.hooks, seed=recipe.seed)

    def sft(self) -> Curve | None:
        recipe = self.recipe
        draw = question_pairs(self.examples, prompt_options(recipe, True), self.evidence, recipe.sft, recipe.seed + 1,
                              recipe.type_from_note)
        return train_on_pairs(self.model, self.processor, draw, recipe.sft, "sft", encoder=self.encoder,
                              hooks=self.hooks, seed=recipe.seed)

    def grpo(self) -> Curve | None:
        if self.recipe.grpo.steps <= 0:
            return None
        if self.hooks is not None:
            raise ValueError("Stage 3 (GRPO) runs in one process only (docs/judo_training.md, JUDO at 3B/7B); "
                             "pass --grpo-steps 0")
        if not Path(str(self.model.config._name_or_path)).is_dir():  # TRL builds its reference model from disk
            saved = save_checkpoint(self.model, self.processor, self.out_dir / "stages" / "grpo_init")
            self.load(*load_checkpoint(saved))
        return train_grpo_trl(self.model, self.processor, self.examples, prompt_options(self.recipe, False),
                              self.evidence, self.recipe.grpo, str(self.out_dir / "stages" / "grpo_trl"),
                              seed=self.recipe.seed)


def check_start(stage: str, preset: str, base: str | Path | None, init: str | Path | None) -> None:
    """Raise unless ``stage`` is one and the preset has what it starts from."""
    if stage not in (*STAGES, "all"):
        raise ValueError(f"stage must be one of {STAGES + ('all',)}, got {stage!r}")
    spec = get_preset(preset)
    if spec.from_scratch and base is not None:
        raise ValueError(f"--base is for the 3B/7B presets; {preset!r} starts from scratch or from --init")
    if not spec.from_scratch and base is None and init is None:
        raise ValueError(f"preset {preset!r} trains from a local Qwen2.5-VL folder: pass --base DIR (or --init)")


def open_run(data_dir: str | Path, out_dir: str | Path, stage: str = "all", recipe: Recipe | None = None,
             init: str | Path | None = None, train_file: str = "mmad_train.json", preset: str = "tiny",
             base: str | Path | None = None, hooks: TrainerHooks | None = None) -> tuple[Stages, TrainingLog]:
    """A run's examples, evidence (prepared beforehand: :func:`prepare_evidence`), model and log.

    The model: ``init`` (a previous stage's checkpoint) when given, else ``tiny`` built from scratch or a
    3B/7B preset's ``base`` folder (:func:`load_for_training`)."""
    check_start(stage, preset, base, init)
    spec = get_preset(preset)
    recipe = recipe or Recipe()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    examples = load_examples(data_dir, train_file)
    evidence = load_evidence(data_dir) if recipe.evidence_route else None
    torch.set_num_threads(recipe.threads)  # after the evidence, whose extractor sets its own thread count
    log = TrainingLog(recipe=recipe.as_dict(), data=str(data_dir))
    if init is not None:
        model, processor = load_for_training(preset, init)
        recorded = read_training_log(init)
        log.stages.extend(recorded.get("stages", []))
        log.model = model_record(preset, base if base is not None else (recorded.get("model") or {}).get("base"))
    elif stage == "grpo":
        raise ValueError("GRPO starts from a Stage 2 checkpoint: pass --init (zero advantages otherwise)")
    elif spec.from_scratch:
        model, processor = _build_model(data_dir, recipe.seed)
    else:
        model, processor = load_for_training(preset, base)
        log.model = model_record(preset, base)
    return Stages(recipe, examples, evidence, model, processor, out_dir, preset, hooks), log


def train(data_dir: str | Path, out_dir: str | Path, stage: str = "all", recipe: Recipe | None = None,
          init: str | Path | None = None, curves_png: str | Path | None = None,
          train_file: str = "mmad_train.json", preset: str = "tiny", base: str | Path | None = None) -> TrainingLog:
    """Run ``stage`` (note, seg, sft, grpo or all) and save the resulting checkpoint in ``out_dir``."""
    check_start(stage, preset, base, init)
    recipe = recipe or Recipe()
    if recipe.evidence_route:
        prepare_evidence(Path(data_dir), progress=lambda c: print(f"evidence: {c}", flush=True))
    out_dir = Path(out_dir)
    run, log = open_run(data_dir, out_dir, stage, recipe, init, train_file, preset, base)
    todo = STAGES if stage == "all" else (stage,)
    stage_dir = out_dir / "stages" if stage == "all" else None
    for name in todo:
        start = time.time()
        curve = getattr(run, name)()
        if curve is None:
            continue
        curve.seconds = time.time() - start
        log.stages.append(curve.as_dict())
        print(f"{name}: {curve.seconds:.0f} s", flush=True)
        if stage_dir is not None and name != todo[-1]:
            saved = save_checkpoint(run.model, run.processor, stage_dir / name)
            log.write(saved)
            run.reload(saved)  # GRPO's reference model is read from this folder
    save_checkpoint(run.model, run.processor, out_dir)
    shutil.rmtree(out_dir / "stages" / "grpo_trl", ignore_errors=True)
    log.write(out_dir)
    if curves_png is not None:
        plot_curves(log.stages, curves_png)
    return log
