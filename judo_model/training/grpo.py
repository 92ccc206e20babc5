"""Stage 3: GRPO with TRL's ``GRPOTrainer`` and JUDO's three reward callables.

The dataset is conversational, as TRL's VLM path expects (TRL 1.16,
``GRPOTrainer._prepare_inputs`` / ``_tokenize_prompts``): ``prompt`` holds the
:func:`judo_model.prompting.build_prompt` messages with ``{"type": "image"}``
placeholders, ``images`` the juxtaposed images in placeholder order (reference, query,
evidence); TRL injects the images into the placeholders, renders the chat template with
the JUDO processor and passes ``pixel_values`` / ``image_grid_thw`` to generation and to
the policy / reference log-probabilities. The remaining columns (``answer``,
``options``, ``mask``, ``gt_boxes``) reach the rewards as keyword arguments.

``options`` is stored as JSON text (Arrow would otherwise turn the per-question
``{letter: text}`` dicts of different sizes into one struct padded with nulls);
:func:`json_options` decodes it before calling the unchanged reward functions.
"""

from __future__ import annotations

import json
import random
import time
from functools import wraps

from judo_model.rewards import JUDO_REWARD_FUNCTIONS
from judo_model.training.data import (
    BalancedSampler,
    Example,
    PromptOptions,
    example_prompt,
    ground_truth_mask,
    target_boxes,
)
from judo_model.training.sft import Curve


def json_options(reward):
    """``reward`` with the ``options`` column decoded from JSON text (same name, same result)."""

    @wraps(reward)
    def wrapped(completions, **kwargs):
        if "options" in kwargs and kwargs["options"] is not None:
            kwargs = {**kwargs, "options": [json.loads(o) if isinstance(o, str) else o for o in kwargs["options"]]}
        return reward(completions, **kwargs)

    return wrapped


def grpo_rows(examples: list[Example], options: PromptOptions, evidence, count: int, seed: int = 0) -> list[dict]:
    """``count`` balanced single-question prompts with the reward columns."""
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
        })
    return rows


def train_grpo_trl(model, processor, examples: list[Example], options: PromptOptions, evidence, steps: int,
                   out_dir: str, num_generations: int = 4, prompts_per_step: int = 2, lr: float = 5e-5,
                   beta: float = 0.04, max_completion_length: int = 80, temperature: float = 1.0,
                   seed: int = 0) -> Curve:
    """Run TRL's GRPOTrainer on CPU for ``steps`` steps; trains ``model`` in place."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows = grpo_rows(examples, options, evidence, max(steps * prompts_per_step, prompts_per_step), seed)
    dataset = Dataset.from_list(rows)
    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        max_steps=steps,
        per_device_train_batch_size=num_generations * prompts_per_step,
        num_generations=num_generations,
        gradient_accumulation_steps=1,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=beta,
        temperature=temperature,
        max_completion_length=max_completion_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=seed,
        disable_tqdm=False,
        gradient_checkpointing=False,
    )
    model.train()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[json_options(f) for f in JUDO_REWARD_FUNCTIONS],
        args=config,
        train_dataset=dataset,
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
