"""Run a JUDO checkpoint: greedy generation (optionally guided) and option likelihoods.

Inference builds its prompt with the same :func:`judo_model.runtime.prompting.build_prompt` used
for training and reads outputs with the one :func:`judo_model.runtime.output.parse_output`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessorList

from judo_model.modeling import load_checkpoint
from judo_model.processing import JudoProcessor
from judo_model.runtime.constraints import ChoiceConstraint, RowChoiceConstraints
from judo_model.runtime.output import ANSWER_CLOSE, ANSWER_OPEN, ParsedOutput, answer_words, parse_output
from judo_model.runtime.prompting import ImageLike, JudoPrompt, Question, build_prompt, prompt_text

DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class JudoModel:
    """A loaded checkpoint with the processor it was trained with."""

    model: torch.nn.Module
    processor: JudoProcessor

    @classmethod
    def load(cls, checkpoint_dir: str | Path, dtype: torch.dtype | str = "float32", device: str | None = None):
        model, processor = load_checkpoint(checkpoint_dir, dtype=dtype)
        if device is not None:
            model = model.to(device)
        return cls(model=model, processor=processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _inputs(self, prompt_suffix: str = "", **prompt_kwargs):
        """Model inputs for a prompt, optionally with text already written by the assistant."""
        return self.encode_batch([build_prompt(**prompt_kwargs)], [prompt_suffix])

    def encode_batch(self, prompts: Sequence[JudoPrompt], prefixes: Sequence[str] | None = None):
        """Model inputs for prompts (each followed by its prefix, text already written by the assistant),
        left-padded to one length (whatever the tokenizer's own padding side: a stock Qwen tokenizer pads
        right); the images of every row concatenated in placeholder order."""
        prefixes = _per_row(prefixes, len(prompts), "", "prefixes")
        texts = [prompt_text(self.processor, prompt) + prefix for prompt, prefix in zip(prompts, prefixes)]
        images = [image for prompt in prompts for image in prompt.images] or None  # the processor rejects []
        return self.processor(text=texts, images=images, padding=True, padding_side="left",
                              return_tensors="pt").to(self.device)

    @torch.inference_mode()
    def generate(
        self,
        reference_image: ImageLike | None,
        query_image: ImageLike,
        evidence_image: ImageLike | None = None,
        questions: Sequence[Question] | None = None,
        domain_knowledge: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        evidence_note: str | None = None,
        defect_types: Sequence[str] | None = None,
        answer_options: Sequence[str] | None = None,
        prefix: str = "",
    ) -> tuple[str, ParsedOutput]:
        """Greedy-decode one answer; returns the raw text and its parse.

        ``defect_types`` (the product's known defect types) constrains the verdict's type to
        one of them, ``answer_options`` each ``<answer>`` to one of those texts
        (:class:`ChoiceConstraint`); None decodes the slot freely. ``prefix`` is taken as
        already written by the model (the raw text returned starts with it).
        """
        prompt = build_prompt(
            reference_image=reference_image,
            query_image=query_image,
            evidence_image=evidence_image,
            evidence_note=evidence_note,
            questions=questions,
            domain_knowledge=domain_knowledge,
        )
        return self.generate_from_prompt(prompt, max_new_tokens, defect_types, answer_options, prefix)

    @torch.inference_mode()
    def generate_from_prompt(
        self,
        prompt: JudoPrompt,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        defect_types: Sequence[str] | None = None,
        answer_options: Sequence[str] | None = None,
        prefix: str = "",
    ) -> tuple[str, ParsedOutput]:
        """:meth:`generate` for a prompt already built (e.g. Stage 0's text-only notes)."""
        return self.generate_batch([prompt], max_new_tokens, [defect_types], [answer_options], [prefix])[0]

    @torch.inference_mode()
    def generate_batch(
        self,
        prompts: Sequence[JudoPrompt],
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        defect_types: Sequence[Sequence[str] | None] | None = None,
        answer_options: Sequence[Sequence[str] | None] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[tuple[str, ParsedOutput]]:
        """Greedy-decode several prompts in one ``generate`` call; one (raw text, parse) per prompt.

        Rows are left-padded to one length (the attention mask keeps padding out of attention
        and of Qwen2.5-VL's 3D rope positions), each row shows its own images, decodes its own
        closed slots (``defect_types[i]``, ``answer_options[i]``: see :meth:`generate`) and stops
        at its own end of turn. The per-row lists default to None / "" for every row.
        """
        if not prompts:
            return []
        rows = len(prompts)
        defect_types = _per_row(defect_types, rows, None, "defect_types", choices=True)
        answer_options = _per_row(answer_options, rows, None, "answer_options", choices=True)
        prefixes = _per_row(prefixes, rows, "", "prefixes")
        tokenizer = self.processor.tokenizer
        inputs = self.encode_batch(prompts, prefixes)
        length = inputs["input_ids"].shape[1]  # left padding: every row's answer starts here
        constraints = [ChoiceConstraint.for_output(tokenizer, length, defect_types=types, answer_options=options)
                       for types, options in zip(defect_types, answer_options)]
        guided = [RowChoiceConstraints(constraints)] if any(c is not None for c in constraints) else []
        output_ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         logits_processor=LogitsProcessorList(guided))
        raws = [prefix + text for prefix, text in
                zip(prefixes, tokenizer.batch_decode(output_ids[:, length:], skip_special_tokens=True))]
        return [(raw, parse_output(raw)) for raw in raws]

    @torch.inference_mode()
    def score_options(
        self,
        reference_image: ImageLike | None,
        query_image: ImageLike,
        question: Question,
        evidence_image: ImageLike | None = None,
        domain_knowledge: str | None = None,
        reasoning_prefix: str | None = None,
        length_normalized: bool = False,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        evidence_note: str | None = None,
        defect_types: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Log-likelihood of each option's text as the answer, after the model's own reasoning.

        The model first writes its reasoning, verdict and region greedily (or
        ``reasoning_prefix`` is used); each option is then scored as the continuation
        `` <option text></answer>``. ``length_normalized`` divides by the option's token count.
        """
        if not question.options:
            raise ValueError("score_options needs a question with options")
        prompt_kwargs = dict(
            reference_image=reference_image,
            query_image=query_image,
            evidence_image=evidence_image,
            evidence_note=evidence_note,
            questions=[question],
            domain_knowledge=domain_knowledge,
        )
        if reasoning_prefix is None:
            raw, _ = self.generate(**prompt_kwargs, max_new_tokens=max_new_tokens, defect_types=defect_types)
            reasoning_prefix = answer_prefix(raw)
        base = self._inputs(prompt_suffix=reasoning_prefix, **prompt_kwargs)
        return {
            letter: self._continuation_log_likelihood(base, answer_words(text) + ANSWER_CLOSE, length_normalized)
            for letter, text in question.options.items()
        }

    def _continuation_log_likelihood(self, base, continuation: str, length_normalized: bool) -> float:
        tokenizer = self.processor.tokenizer
        continuation_ids = torch.tensor(
            [tokenizer(continuation, add_special_tokens=False)["input_ids"]], device=self.device
        )
        inputs = dict(base)
        prompt_length = base["input_ids"].shape[1]
        inputs["input_ids"] = torch.cat([base["input_ids"], continuation_ids], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in base:
            inputs["mm_token_type_ids"] = torch.cat(
                [base["mm_token_type_ids"], torch.zeros_like(continuation_ids)], dim=1
            )
        logits = self.model(**inputs).logits[0, prompt_length - 1 : -1].float()
        log_probs = torch.log_softmax(logits, dim=-1).gather(1, continuation_ids[0].unsqueeze(1))
        total = float(log_probs.sum())
        return total / continuation_ids.shape[1] if length_normalized else total


def answer_prefix(raw_output: str) -> str:
    """The generated text up to and including the first ``<answer>`` (added when missing)."""
    position = raw_output.find(ANSWER_OPEN)
    if position >= 0:
        return raw_output[: position + len(ANSWER_OPEN)]
    region_end = raw_output.rfind("</region>")
    kept = raw_output[: region_end + len("</region>")] if region_end >= 0 else raw_output
    return kept.rstrip() + "\n" + ANSWER_OPEN


def _per_row(values, rows: int, default, name: str, choices: bool = False) -> list:
    """A per-row argument as a list of ``rows`` values (``default`` for each when None);
    ``choices``: each value is a list of texts or None (a bare string is a mistake, not a list)."""
    if values is None:
        return [default] * rows
    values = list(values)
    if len(values) != rows:
        raise ValueError(f"{name}: {len(values)} values for {rows} prompts (one per prompt)")
    if choices and any(isinstance(value, str) for value in values):
        raise ValueError(f"{name}: expected one list of choices (or None) per prompt, got a string")
    return values
