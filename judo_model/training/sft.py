"""The supervised stages (0 note reading, 1 juxtaposed segmentation, 2 domain-knowledge QA SFT).

All three are next-token training on contract targets. The loss is computed on the target tokens
only, and the language-model head runs on those positions only (the prompt holds most of the
tokens, so this is the cheap way to train on CPU).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from peft import PeftModel
from tqdm import tqdm

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


def language_model_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the Qwen2.5-VL body, its LM head) of ``model``, LoRA-wrapped or not (peft injects the adapters
    in place, so the body of a :class:`PeftModel` runs them)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return base.model, base.lm_head


def target_loss(model, batch) -> torch.Tensor:
    """Cross-entropy on the labelled (target) tokens, with the LM head applied to those only."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    body, head = language_model_parts(model)
    hidden = body(**inputs).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][selected])
    return F.cross_entropy(logits.float(), targets[selected])


class TargetLoss(torch.nn.Module):
    """:func:`target_loss` as a module's forward, so a data-parallel wrapper (DDP) sees the call and
    averages the gradients of the parameters it reaches."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **batch) -> torch.Tensor:
        return target_loss(self.model, batch)


@dataclass
class ParallelWorker:
    """How :func:`train_on_pairs` runs as one of ``world_size`` data-parallel workers; the runner that
    starts the workers fills it in (``pipelines/ray_training.py``: Ray Train), this module imports no
    distributed runtime. Every worker draws the same batch (so the data stream is the single-process
    one) and trains on its share ``rank::world_size``.

    ``wrap`` wraps the loss module (in DDP; called first, it may move the model to the worker's device);
    ``mean`` averages a worker's loss over the workers (for the curve); ``resume(model, optimizer, curve)``
    restores what a checkpoint holds (the same on every worker) and returns the step to continue at (0 for
    a fresh run; the batches before it are drawn again and dropped, so the data continues where it
    stopped); ``report(step, loss, model, optimizer, curve)`` runs after every step (checkpointing)."""

    rank: int
    world_size: int
    wrap: Callable[[torch.nn.Module], torch.nn.Module]
    mean: Callable[[float], float]
    resume: Callable[[torch.nn.Module, torch.optim.Optimizer, Curve], int]
    report: Callable[[int, float, torch.nn.Module, torch.optim.Optimizer, Curve], None]


def lr_at(step: int, stage: NoteStage | SegStage | SftStage) -> float:
    if step < WARMUP:
        return stage.lr * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, stage.steps - WARMUP)
    return stage.lr * (stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


def train_on_pairs(model, processor, draw: Pairs, stage: NoteStage | SegStage | SftStage, name: str,
                   encoder: CachedEncoder | None = None, on_step: Callable[[int, float], None] | None = None,
                   parallel: ParallelWorker | None = None) -> Curve:
    """Train ``model`` in place on ``stage.steps`` batches of (prompt, target) from ``draw``; with
    ``parallel``, as one data-parallel worker (:class:`ParallelWorker`). Batches go to the model's device."""
    encoder = encoder or CachedEncoder(processor)
    pad = processor.tokenizer.pad_token_id
    parameters = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=stage.lr)
    curve = Curve(name)
    loss_of = TargetLoss(model)
    first = 0
    if parallel is not None:
        loss_of = parallel.wrap(loss_of)  # first: the wrapper may move the model to the worker's device
        first = parallel.resume(model, optimizer, curve)
        for _ in range(first):
            draw(stage.batch_size)
    device = parameters[0].device
    model.train()
    start = time.time()
    bar = tqdm(range(first, stage.steps), desc=name, unit="step", initial=first, total=stage.steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, stage)
        pairs = draw(stage.batch_size)
        if parallel is not None:
            pairs = pairs[parallel.rank::parallel.world_size]
        batch = collate_for_training([encoder.encode(*pair) for pair in pairs], pad)
        if device.type != "cpu":
            batch = batch.to(device)
        loss = loss_of(**batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP)
        optimizer.step()
        value = loss.item() if parallel is None else parallel.mean(loss.item())
        curve.add(step, loss=value, lr=optimizer.param_groups[0]["lr"])
        bar.set_postfix(loss=f"{value:.3f}")
        if on_step:
            on_step(step, value)
        if parallel is not None:
            parallel.report(step, value, model, optimizer, curve)
    curve.seconds = time.time() - start
    model.eval()
    return curve
