"""Stage 3: GRPO with TRL's ``GRPOTrainer``, JUDO's three reward callables and guided sampling.

The dataset is conversational, as TRL's VLM path expects (TRL 1.16): ``prompt`` holds the
:func:`judo_model.runtime.prompting.build_prompt` messages with ``{"type": "image"}`` placeholders,
``images`` the juxtaposed images in placeholder order; TRL fills the placeholders, renders the chat
template with the JUDO processor and passes the pixels to generation and to the log-probabilities.
``answer``, ``options``, ``mask`` and ``gt_boxes`` reach the rewards as keyword arguments; ``guide``
is read by :class:`GuidedGRPOTrainer`, which samples the verdict's type and each answer among their
choices, as inference decodes them (docs/judo_training.md, "GRPO with TRL").
"""

from __future__ import annotations

import json
import random
import time
from functools import wraps

import torch
from datasets import Dataset
from transformers import LogitsProcessorList
from trl import GRPOConfig, GRPOTrainer

from judo_model.rewards import JUDO_REWARD_FUNCTIONS
from judo_model.runtime.constraints import ChoiceConstraint, RowChoiceConstraints
from judo_model.runtime.inputs import PromptOptions
from judo_model.training.data import BalancedSampler, Example, example_prompt, ground_truth_mask, target_boxes
from judo_model.training.recipe import GrpoStage
from judo_model.training.sft import Curve

#: Longest completion sampled (the contract with one answer fits in about 60 tokens).
MAX_COMPLETION_LENGTH = 80


def json_options(reward):
    """``reward`` with the ``options`` column decoded from JSON text (Arrow would pad the
    differently sized option dicts into one struct; same name, same result)."""

    @wraps(reward)
    def wrapped(completions, **kwargs):
        if "options" in kwargs and kwargs["options"] is not None:
            kwargs = {**kwargs, "options": [json.loads(o) if isinstance(o, str) else o for o in kwargs["options"]]}
        return reward(completions, **kwargs)

    return wrapped


def grpo_rows(examples: list[Example], options: PromptOptions, evidence, count: int, seed: int = 0) -> list[dict]:
    """``count`` balanced single-question prompts with the reward and guide columns."""
    sampler = BalancedSampler(examples, seed=seed, single_question=1.0)
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        example = sampler()
        prompt = example_prompt(example, options, evidence, rng, use_knowledge=False)
        mask = ground_truth_mask(example)
        rows.append({
            "prompt": prompt.messages,
            "images": prompt.images,
            "answer": example.answer_letters[0],
            "options": json.dumps(example.questions[0].options),
            "mask": str(example.root / example.mask_key) if example.mask_key else "",
            "gt_boxes": [list(b) for b in target_boxes(mask)] if mask.any() else [],
            "guide": json.dumps({"defect_types": evidence.defect_types_of(example.key) if evidence else None,
                                 "answer_options": list(example.questions[0].options.values())}),
        })
    return rows


class GuidedGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` whose sampling follows each row's ``guide`` column."""

    def _generate_and_score_completions(self, inputs):
        self._row_guides = [json.loads(row["guide"]) for row in inputs]
        return super()._generate_and_score_completions(inputs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        model = self.accelerator.unwrap_model(self.model)
        tokenizer = self.processing_class.tokenizer
        generate = model.generate

        def guided_generate(*args, **kwargs):
            length = kwargs["input_ids"].shape[1]  # prompts are left-padded to one length
            constraints = [ChoiceConstraint.for_output(tokenizer, length, **guide) for guide in self._row_guides]
            kwargs["logits_processor"] = LogitsProcessorList([RowChoiceConstraints(constraints)])
            return generate(*args, **kwargs)

        model.generate = guided_generate
        try:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        finally:
            del model.generate


def train_grpo_trl(model, processor, examples: list[Example], options: PromptOptions, evidence, stage: GrpoStage,
                   out_dir: str, seed: int = 0) -> Curve:
    """Run guided GRPO for ``stage.steps`` steps; trains ``model`` in place. A LoRA model (the 3B/7B presets)
    trains its adapters, TRL taking the reference log-probabilities with the adapters' starting copy; bf16
    where its weights are (CUDA)."""
    rows = grpo_rows(examples, options, evidence, max(stage.steps * stage.prompts_per_step, stage.prompts_per_step),
                     seed)
    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=not torch.cuda.is_available(),
        bf16=next(model.parameters()).dtype == torch.bfloat16,
        fp16=False,
        max_steps=stage.steps,
        per_device_train_batch_size=stage.generations * stage.prompts_per_step,
        num_generations=stage.generations,
        gradient_accumulation_steps=1,
        learning_rate=stage.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=stage.beta,
        temperature=1.0,
        scale_rewards="group",
        max_completion_length=MAX_COMPLETION_LENGTH,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=seed,
        disable_tqdm=False,
        activation_checkpointing=False,  # a 3B/7B model comes with it enabled (load_for_training): kept
    )
    model.train()
    trainer = GuidedGRPOTrainer(
        model=model,
        reward_funcs=[json_options(f) for f in JUDO_REWARD_FUNCTIONS],
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    start = time.time()
    trainer.train()
    curve = Curve("grpo")
    for entry in trainer.state.log_history:
        if "reward" not in entry:
            continue
        metrics = {"reward": entry["reward"]}
        for key, value in entry.items():
            if key.startswith("rewards/") and key.endswith("/mean"):
                metrics[key.split("/")[1]] = value
        if "kl" in entry:
            metrics["kl"] = entry["kl"]
        curve.add(int(entry.get("step", len(curve.steps))), **metrics)
    curve.seconds = time.time() - start
    model.eval()
    return curve
