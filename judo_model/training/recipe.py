"""The knobs of one ``judo train`` run (importable without torch, for the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("note", "seg", "sft", "grpo")


@dataclass
class Recipe:
    """Steps and switches of one training run (the ``tiny`` preset's defaults ship the checkpoint)."""

    note_steps: int = 3100
    note_batch_size: int = 16
    note_lr: float = 1e-3
    note_above_share: float = 0.85
    note_hint_share: float = 0.95
    seg_steps: int = 300
    sft_steps: int = 1000
    grpo_steps: int = 0
    batch_size: int = 8
    seg_lr: float = 1e-3
    sft_lr: float = 5e-4
    grpo_lr: float = 1e-4
    grpo_generations: int = 4
    grpo_prompts_per_step: int = 2
    grpo_beta: float = 0.04
    grpo_temperature: float = 1.0
    #: TRL's advantage scaling: "group" divides by each prompt's reward spread (which blows tiny
    #: box differences up to full-size advantages), "batch" by the batch's, "none" not at all
    grpo_scale_rewards: str = "group"
    #: sample the verdict's type and the answers among their choices, as inference decodes them
    grpo_guided: bool = True
    #: what the segmentation reward compares the region with (grpo.REGION_TRUTHS)
    grpo_region_truth: str = "mask"
    #: segmentation reward of an empty region on a normal image; below 1 it matches what a right
    #: defect verdict's region earns (an IoU), so the reward does not favour "no defect" by itself
    grpo_empty_region_reward: float = 1.0
    reference: bool = True
    evidence_route: str | None = "heat_crop_text"
    domain_knowledge_prob: float = 0.25
    single_question: float = 0.4
    sft_replay: float = 0.3
    note_replay: float = 0.2
    sft_note_replay: float = 0.0
    type_from_note: bool = True
    answer_type_from_note: bool = True
    #: the evidence note names the known product the image looks most like (Stage 0 notes too)
    product_note: bool = True
    #: share of Stage 0 notes followed by one MMAD question the note answers (needs product_note)
    note_question_share: float = 0.5
    #: with product_note, the first this many Stage 0 steps read plain notes (the copy forms first)
    note_plain_steps: int = 2500
    #: Stage 0 questions: how often each kind is asked (note_reading.QUESTION_KINDS' order: Anomaly
    #: Detection, half yes and half no; Object, Defect Classification; Localization; Description;
    #: Analysis); empty: any question the note allows, uniformly
    note_question_weights: tuple[float, ...] = (1.0, 1.5, 1.0, 1.0, 2.0, 2.0)
    #: share of Stage 0's product notes that name an invented product (copying a name never seen)
    note_unseen_share: float = 0.15
    #: how invented product names are made, in Stage 0 and Stage 2 (note_reading.INVENTED_NAME_KINDS):
    #: "listed" material and part words, or "random" syllables, a new name every time
    invented_names: str = "listed"
    #: Stage 2 learns only the answers of prompts that ask a defect question ("There is a defect in
    #: the object..."): their reasoning, verdict and region are context, not targets, so that a
    #: question in the prompt never teaches the verdict "defective" (it moved 12 of 40 normal images)
    sft_cue_answers_only: bool = False
    #: share of Stage 2's examples asking Object Classification (where the note names the product)
    #: that call the product by an invented name in the note and the options, so the answer is
    #: read from the note: a held-out product is named there but never seen in training
    sft_unseen_product_share: float = 0.0
    seed: int = 0
    threads: int = 1
