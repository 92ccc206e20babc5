"""Supervised stages (Stage 1 juxtaposed segmentation, Stage 2 domain-knowledge QA SFT).

Both are next-token training on contract targets; they differ only in what the examples
ask (no question: verdict + region only; MMAD questions: verdict + region + answers) and
in how often the domain knowledge is in the prompt. The loss is computed on the target
tokens only, and the language-model head runs on those positions only (the prompt holds
most of the tokens, so this is the cheap way to train on CPU).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from judo_model.data.knowledge import product_title
from judo_model.mmad.format import DEFECT_QUESTION_TYPES
from judo_model.output import ANSWER_OPEN
from judo_model.prompting import IGNORE_INDEX, JudoPrompt, collate_for_training
from judo_model.training.data import (BalancedSampler, Example, PromptOptions, evidence_hint, example_prompt,
                                      names_product, note_type, target_for, untrained_product_names,
                                      with_products_renamed)
from judo_model.training.encoding import CachedEncoder
from judo_model.training.note_reading import InventedNames


@dataclass
class SFTConfig:
    steps: int
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    single_question: float = 0.4
    replay: float = 0.0
    note_replay: float = 0.0
    type_from_note: bool = False
    answer_type_from_note: bool = False
    #: prompts with a defect question learn their answers only (see Recipe.sft_cue_answers_only)
    cue_answers_only: bool = False
    #: share of the examples asking Object Classification whose note and options call the product by
    #: an invented name (see Recipe.sft_unseen_product_share)
    unseen_product_share: float = 0.0
    #: how the invented names are made (note_reading.INVENTED_NAME_KINDS)
    invented_names: str = "listed"


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


def target_loss(model, batch) -> torch.Tensor:
    """Cross-entropy on the labelled (target) tokens, with the LM head applied to those only."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][selected])
    return F.cross_entropy(logits.float(), targets[selected])


def lr_at(step: int, config: SFTConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_supervised(model, processor, examples: list[Example], options: PromptOptions, evidence, config: SFTConfig,
                     stage: str, questions: bool = True, encoder: CachedEncoder | None = None,
                     on_step: Callable[[int, float], None] | None = None,
                     notes: Callable[[], tuple[JudoPrompt, str]] | None = None) -> Curve:
    """Train ``model`` in place for ``config.steps`` balanced batches; returns the loss curve."""
    draw = supervised_pairs(examples, options, evidence, config, questions=questions, notes=notes)
    return train_on_pairs(model, processor, draw, config, stage, encoder=encoder, on_step=on_step)


def supervised_pairs(examples: list[Example], options: PromptOptions, evidence, config: SFTConfig,
                     questions: bool = True, notes: Callable[[], tuple[JudoPrompt, str]] | None = None
                     ) -> Callable[[int], list[tuple]]:
    """Batches of (prompt, target[, learn_from]) for Stage 1 (``questions=False``) or Stage 2.

    With ``notes`` (Stage 0's sampler), a share ``config.note_replay`` of every batch is
    text-only note reading, so that the images do not wash the copying out again. With
    ``config.type_from_note`` the verdict names the type the note names, where it names one,
    and with ``config.answer_type_from_note`` so does the Defect Classification answer. With
    ``config.cue_answers_only`` a prompt asking a defect question learns from its first answer on
    (``learn_from``: that character of the target). With ``config.unseen_product_share`` that share
    of the examples asking Object Classification, where the note names the product, call it by an
    invented name in the note and the options, and every such example offers invented names in place
    of products no training image shows (:func:`with_products_renamed`).
    """
    sampler = BalancedSampler(examples, seed=config.seed, single_question=config.single_question, questions=questions,
                              replay=config.replay)
    rng = random.Random(config.seed + 1)
    replay_rng = random.Random(config.seed + 2)
    rename_rng = random.Random(config.seed + 3)
    invented = InventedNames(config.invented_names) if config.unseen_product_share else None
    untrained = untrained_product_names(examples) if invented else []

    def pair(example: Example) -> tuple[JudoPrompt, str, int]:
        shown_as = None
        if invented and "Object Classification" in example.question_types:
            candidate = invented.one(rename_rng)
            names = dict(zip(untrained, invented.others(rename_rng, candidate, len(untrained))))
            if names_product(example, options, evidence) and rename_rng.random() < config.unseen_product_share:
                shown_as = names[product_title(example.category)] = candidate
            example = with_products_renamed(example, names)
        hinted = note_type(example, options, evidence)
        target = target_for(example, hint=evidence_hint(example, options, evidence),
                            named_type=hinted if config.type_from_note else None,
                            answered_type=hinted if config.answer_type_from_note else None)
        cued = config.cue_answers_only and any(kind in DEFECT_QUESTION_TYPES for kind in example.question_types)
        prompt = example_prompt(example, options, evidence, rng, product_shown_as=shown_as)
        return prompt, target, target.index(ANSWER_OPEN) if cued else 0

    def draw(size: int) -> list[tuple]:
        return [notes() if notes is not None and replay_rng.random() < config.note_replay else pair(sampler())
                for _ in range(size)]

    return draw


def train_on_pairs(model, processor, draw: Callable[[int], list[tuple]], config: SFTConfig,
                   stage: str, encoder: CachedEncoder | None = None,
                   on_step: Callable[[int, float], None] | None = None) -> Curve:
    """Train ``model`` in place on ``config.steps`` batches of (prompt, target[, learn_from]) from ``draw``."""
    encoder = encoder or CachedEncoder(processor)
    pad = processor.tokenizer.pad_token_id
    parameters = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    curve = Curve(stage)
    model.train()
    start = time.time()
    bar = tqdm(range(config.steps), desc=f"{stage}", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        encoded = [encoder.encode(*pair) for pair in draw(config.batch_size)]
        loss = target_loss(model, collate_for_training(encoded, pad))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        curve.add(step, loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step:
            on_step(step, loss.item())
    curve.seconds = time.time() - start
    model.eval()
    return curve
