"""The supervised stages (0 note reading, 1 juxtaposed segmentation, 2 domain-knowledge QA SFT) on TRL's
``SFTTrainer``.

All three are next-token training on contract targets. The stage's sampler draws one batch of (prompt, target)
per optimizer step; :class:`CachedEncoder` and :func:`collate_for_training` turn it into model inputs (the
trainer's collator: TRL neither tokenizes nor packs). The loss is computed on the target tokens only, and the
language-model head runs on those positions only (the prompt holds most of the tokens, so this is the cheap way
to train on CPU).
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from datasets import IterableDataset
from datasets.iterable_dataset import ExamplesIterable
from torch.optim.lr_scheduler import LambdaLR
from transformers import ProgressCallback, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from trl import SFTConfig, SFTTrainer

from judo_model.runtime.inputs import PromptOptions
from judo_model.runtime.prompting import IGNORE_INDEX, JudoPrompt, collate_for_training
from judo_model.training.data import BalancedSampler, Example, evidence_hint, example_prompt, note_type, target_for
from judo_model.training.encoding import CachedEncoder
from judo_model.training.recipe import NoteStage, SegStage, SftStage

#: Linear warm-up steps, then a cosine decay to the stage's ``min_lr_ratio``.
WARMUP = 30
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0

Pairs = Callable[[int], list[tuple[JudoPrompt, str]]]
Notes = Callable[[], tuple[JudoPrompt, str]]
SupervisedStage = NoteStage | SegStage | SftStage


@dataclass
class Curve:
    """Per-step metrics of one stage, for the log file and the PNG."""

    stage: str
    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, step: int, **metrics: float) -> None:
        self.steps.append(step)
        for name, value in metrics.items():
            self.values.setdefault(name, []).append(float(value))

    def as_dict(self) -> dict:
        return {"stage": self.stage, "steps": self.steps, "values": self.values, "seconds": round(self.seconds, 1)}


@dataclass
class TrainerHooks:
    """What a runner of data-parallel workers adds to a stage's trainer (``pipelines/ray_training.py``: Ray Train;
    this module imports no distributed runtime; the trainer wraps the model in DDP when ``torch.distributed`` is
    initialised). The trainer saves a checkpoint (weights, optimizer, scheduler, step, log history) in
    ``output_dir`` every ``save_steps`` steps and after the last; ``callbacks`` see each save; ``resume_from`` is
    such a checkpoint to continue from."""

    output_dir: str
    save_steps: int
    callbacks: list[TrainerCallback] = field(default_factory=list)
    resume_from: str | None = None


def lr_factor(step: int, stage: SupervisedStage) -> float:
    """The share of ``stage.lr`` at optimizer step ``step`` (0-based): linear warm-up, then cosine."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, stage.steps - WARMUP)
    return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def target_loss(model, batch) -> torch.Tensor:
    """Cross-entropy on the labelled (target) tokens, with the LM head applied to those only (the model's
    ``logits_to_keep`` mask), through the model's own forward (so a DDP wrapper sees the call)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    keep = F.pad(selected, (0, 1), value=False)  # position i predicts token i + 1
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return F.cross_entropy(logits.float(), targets[selected])


def _image_pair(options: PromptOptions, evidence, rng: random.Random, type_from_note: bool,
                answer_type_from_note: bool) -> Callable[[Example], tuple[JudoPrompt, str]]:
    """(prompt, target) of one example; with ``type_from_note`` the verdict (and with
    ``answer_type_from_note`` the Defect Classification answer) names the note's type where it names one."""

    def pair(example: Example) -> tuple[JudoPrompt, str]:
        hinted = note_type(example, options, evidence)
        target = target_for(example, hint=evidence_hint(example, options, evidence),
                            named_type=hinted if type_from_note else None,
                            answered_type=hinted if answer_type_from_note else None)
        return example_prompt(example, options, evidence, rng), target

    return pair


def segmentation_pairs(examples: list[Example], options: PromptOptions, evidence, stage: SegStage, seed: int,
                       type_from_note: bool, notes: Notes | None = None) -> Pairs:
    """Stage 1 batches: balanced images asked nothing; with ``notes`` (Stage 0's sampler) a share
    ``stage.note_replay`` of every batch is text-only note reading."""
    sampler = BalancedSampler(examples, seed=seed, questions=False)
    pair = _image_pair(options, evidence, random.Random(seed + 1), type_from_note, False)
    replay_rng = random.Random(seed + 2)

    def draw(size: int) -> list[tuple[JudoPrompt, str]]:
        return [notes() if notes is not None and replay_rng.random() < stage.note_replay else pair(sampler())
                for _ in range(size)]

    return draw


def question_pairs(examples: list[Example], options: PromptOptions, evidence, stage: SftStage, seed: int,
                   type_from_note: bool) -> Pairs:
    """Stage 2 batches: balanced images with their MMAD questions, a share ``stage.replay`` of Stage 1's."""
    sampler = BalancedSampler(examples, seed=seed, single_question=stage.single_question, replay=stage.replay)
    pair = _image_pair(options, evidence, random.Random(seed + 1), type_from_note, stage.answer_type_from_note)
    return lambda size: [pair(sampler()) for _ in range(size)]


class DrawnBatches:
    """The stage's batches as one stream of rows: batch ``step`` is the ``step``-th ``draw(batch_size)``, for
    steps ``first`` to ``steps - 1`` (the batches before ``first`` are drawn and dropped, so a resumed run
    continues the data where it stopped). Drawn once each; the latest is kept, because the trainer reads the
    first row before training (TRL's dataset inspection) and the stream starts again."""

    def __init__(self, draw: Pairs, batch_size: int, steps: int, first: int = 0):
        self.draw, self.batch_size, self.first, self.steps = draw, batch_size, first, steps
        for _ in range(first):
            draw(batch_size)
        self.drawn, self.latest = first, []

    def batch(self, step: int) -> list[tuple[JudoPrompt, str]]:
        if step == self.drawn - 1:
            return self.latest
        if step != self.drawn:
            raise RuntimeError(f"batch {step} asked after batch {self.drawn - 1}: the batches are drawn once, in order")
        self.latest, self.drawn = self.draw(self.batch_size), self.drawn + 1
        return self.latest

    def rows(self):
        for step in range(self.first, self.steps):
            for row, (prompt, target) in enumerate(self.batch(step)):
                yield f"{step}-{row}", {"prompt": prompt, "target": target}

    def dataset(self) -> IterableDataset:
        return IterableDataset(ExamplesIterable(self.rows, {}))


class TargetLossTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` with :func:`target_loss`, weight decay on the matrices only (every parameter of two
    or more dimensions, as the previous loop did: Hugging Face's default groups by name) and the stage's
    schedule (:func:`lr_factor`; Hugging Face's cosine warm-up starts at 0 instead of ``lr / WARMUP``)."""

    loss_is_scaled_for_ga = False  # a mean over the batch; no gradient accumulation

    def __init__(self, *args, schedule: Callable[[int], float], **kwargs):
        self.schedule = schedule
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise NotImplementedError("the target loss has no outputs to return (no evaluation)")
        return target_loss(model, inputs)

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, p in model.named_parameters() if p.ndim >= 2]

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler


class CurveCallback(TrainerCallback):
    """Fills the stage's :class:`Curve` with each step's loss (averaged over the workers) and learning rate;
    a resumed run starts from the steps its checkpoint logged."""

    def __init__(self, curve: Curve, stage: SupervisedStage, on_step: Callable[[int, float], None] | None):
        self.curve, self.stage, self.on_step = curve, stage, on_step

    def add(self, step: int, loss: float) -> None:
        self.curve.add(step, loss=loss, lr=self.stage.lr * lr_factor(step, self.stage))

    def on_train_begin(self, args, state, control, **kwargs):
        for entry in state.log_history:
            if "loss" in entry:
                self.add(entry["step"] - 1, entry["loss"])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.add(state.global_step - 1, logs["loss"])
            if self.on_step:
                self.on_step(state.global_step - 1, logs["loss"])


class StageProgress(ProgressCallback):
    """Hugging Face's progress bar, named by the stage, with the loss in the bar instead of a line per step."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.name)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resumed_step(checkpoint: str | Path | None) -> int:
    """The optimizer steps a trainer checkpoint holds (0: none)."""
    if checkpoint is None:
        return 0
    return int(json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())["global_step"])


def train_on_pairs(model, processor, draw: Pairs, stage: SupervisedStage, name: str,
                   encoder: CachedEncoder | None = None, on_step: Callable[[int, float], None] | None = None,
                   hooks: TrainerHooks | None = None, seed: int = 0) -> Curve:
    """Train ``model`` in place on ``stage.steps`` batches of (prompt, target) from ``draw``.

    Under ``torch.distributed`` (a runner's ``hooks``) every worker draws the same batches and trains on its own
    contiguous slice of each (Accelerate's shard of the stream; ``stage.batch_size`` stays the global batch).
    Without ``hooks`` nothing is saved."""
    workers = world_size()
    if stage.batch_size % workers:
        raise ValueError(f"the {name} batch of {stage.batch_size} does not split evenly over {workers} workers")
    encoder = encoder or CachedEncoder(processor)
    pad = processor.tokenizer.pad_token_id
    resume_from = hooks.resume_from if hooks else None
    batches = DrawnBatches(draw, stage.batch_size, stage.steps, first=resumed_step(resume_from))
    vision_trains = any(p.requires_grad for n, p in model.named_parameters() if ".visual." in n)
    with tempfile.TemporaryDirectory(prefix=f"judo-{name}-") as scratch:  # the trainer's folder, unused in one process
        config = SFTConfig(
            output_dir=hooks.output_dir if hooks else scratch,
            max_steps=stage.steps,
            per_device_train_batch_size=stage.batch_size // workers,
            gradient_accumulation_steps=1,
            learning_rate=stage.lr,
            weight_decay=WEIGHT_DECAY,
            optim="adamw_torch",
            max_grad_norm=GRAD_CLIP,
            use_cpu=not torch.cuda.is_available(),
            bf16=next(model.parameters()).dtype == torch.bfloat16,  # the 3B/7B presets on CUDA (training_dtype)
            fp16=False,
            activation_checkpointing=False,  # the 3B/7B presets' models come with it enabled (load_for_training)
            ddp_find_unused_parameters=vision_trains,  # text-only rows (notes) leave a trained vision tower unused
            average_tokens_across_devices=False,
            dataset_kwargs={"skip_prepare_dataset": True},
            remove_unused_columns=False,
            packing=False,
            padding_free=False,
            dataloader_num_workers=0,
            ignore_data_skip=True,  # DrawnBatches skips a resumed run's batches without encoding them
            logging_steps=1,
            save_strategy="steps" if hooks else "no",
            save_steps=hooks.save_steps if hooks else 1,
            save_total_limit=1,
            report_to=[],
            seed=seed,
            disable_tqdm=False,
        )
        curve = Curve(name)
        threads = torch.get_num_threads()
        trainer = TargetLossTrainer(
            model=model,
            args=config,
            train_dataset=batches.dataset(),
            data_collator=lambda rows: collate_for_training([encoder.encode(r["prompt"], r["target"]) for r in rows],
                                                            pad),
            processing_class=processor,
            callbacks=[CurveCallback(curve, stage, on_step), *(hooks.callbacks if hooks else [])],
            schedule=lambda step: lr_factor(step, stage),
        )
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StageProgress(name))
        torch.set_num_threads(threads)  # Accelerate sets its own on a multi-CPU run without OMP_NUM_THREADS
        start = time.time()
        trainer.train(resume_from_checkpoint=resume_from)
        curve.seconds = time.time() - start
        model.eval()
    return curve
