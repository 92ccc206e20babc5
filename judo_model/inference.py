"""Run a JUDO checkpoint: greedy generation, option likelihoods and the MMAD answerer.

Inference builds its prompt with the same :func:`judo_model.prompting.build_prompt` used
for training and reads outputs with the one :func:`judo_model.output.parse_output`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from judo_model.mmad.answerers import ANSWER_MODES, GroundedAnswer
from judo_model.modeling import load_checkpoint
from judo_model.output import (ANSWER_CLOSE, ANSWER_OPEN, COORDINATE_SCALE, ParsedOutput, answer_words,
                               choose_option, parse_output)
from judo_model.processing import JudoProcessor
from judo_model.prompting import ImageLike, JudoPrompt, Question, build_prompt, prompt_text

DEFAULT_MAX_NEW_TOKENS = 256
DEFECT_YES, DEFECT_CLOSE = "<defect>yes:", "</defect>"


class ChoiceConstraint(LogitsProcessor):
    """Guided decoding of the contract's closed slots (a logits processor for ``generate``).

    ``slots`` maps an opening (``<defect>yes:``, ``<answer>``) to the texts that may follow it,
    each ending with the slot's closing tag. Once the model has written an opening, only tokens
    that continue one of its choices keep their scores; outside a slot the scores are left
    untouched, so the processor costs nothing per step for a large vocabulary. Among the
    allowed choices the model's own preference decides.
    """

    def __init__(self, tokenizer, slots: Mapping[str, Sequence[str]], prompt_length: int):
        self.slots = []
        for opening, choices in slots.items():
            if not choices:
                raise ValueError(f"the slot after {opening!r} needs at least one choice")
            self.slots.append((self._ids(tokenizer, opening), [self._ids(tokenizer, c) for c in dict.fromkeys(choices)]))
        self.prompt_length = prompt_length

    @staticmethod
    def _ids(tokenizer, text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    @classmethod
    def for_output(cls, tokenizer, prompt_length: int, defect_types: Sequence[str] | None = None,
                   answer_options: Sequence[str] | None = None) -> "ChoiceConstraint | None":
        """The verdict's type among ``defect_types``, the answer among ``answer_options`` (None: no slot)."""
        slots = {}
        if defect_types:
            slots[DEFECT_YES] = [f" {name}{DEFECT_CLOSE}" for name in sorted(set(defect_types))]
        if answer_options:
            slots[ANSWER_OPEN] = [f"{answer_words(text)}{ANSWER_CLOSE}" for text in answer_options]
        return cls(tokenizer, slots, prompt_length) if slots else None

    def allowed(self, generated: Sequence[int]) -> list[int] | None:
        """The token ids that may come next, or None where the model writes freely."""
        latest, active = -1, None
        for opening, choices in self.slots:
            width = len(opening)
            for start in range(len(generated) - width, latest, -1):
                if list(generated[start:start + width]) == opening:
                    latest, active = start, (start + width, choices)
                    break
        if active is None:
            return None
        written = list(generated[active[0]:])
        allowed = {choice[len(written)] for choice in active[1]
                   if len(choice) > len(written) and choice[:len(written)] == written}
        return sorted(allowed) if allowed else None

    def constrain_row(self, generated: Sequence[int], row_scores: torch.FloatTensor) -> torch.FloatTensor:
        """One sequence's next-token scores with the tokens its open slot forbids at -inf."""
        allowed = self.allowed(generated)
        if allowed is None:
            return row_scores
        keep = torch.full_like(row_scores, float("-inf"))
        keep[allowed] = 0.0
        return row_scores + keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(input_ids.shape[0]):
            scores[row] = self.constrain_row(input_ids[row, self.prompt_length:].tolist(), scores[row])
        return scores


class RowChoiceConstraints(LogitsProcessor):
    """One :class:`ChoiceConstraint` per sequence of a batch (None: that row decodes freely), for
    batches whose rows ask different questions (GRPO's sampled groups)."""

    def __init__(self, constraints: Sequence[ChoiceConstraint | None]):
        self.constraints = list(constraints)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.constraints):
            raise ValueError(f"{len(self.constraints)} row constraints for a batch of {input_ids.shape[0]}")
        for row, constraint in enumerate(self.constraints):
            if constraint is not None:
                scores[row] = constraint.constrain_row(input_ids[row, constraint.prompt_length:].tolist(), scores[row])
        return scores


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
        return self._encode(build_prompt(**prompt_kwargs), prompt_suffix)

    def _encode(self, prompt: JudoPrompt, prompt_suffix: str = ""):
        text = prompt_text(self.processor, prompt) + prompt_suffix
        images = prompt.images or None  # a text-only prompt: the image processor rejects an empty list
        return self.processor(text=[text], images=images, return_tensors="pt").to(self.device)

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
        inputs = self._encode(prompt, prefix)
        constraint = ChoiceConstraint.for_output(self.processor.tokenizer, inputs["input_ids"].shape[1],
                                                 defect_types=defect_types, answer_options=answer_options)
        output_ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         logits_processor=LogitsProcessorList([constraint] if constraint else []))
        new_ids = output_ids[0, inputs["input_ids"].shape[1] :]
        raw = prefix + self.processor.tokenizer.decode(new_ids, skip_special_tokens=True)
        return raw, parse_output(raw)

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


def verdict_prefix(raw_output: str) -> str:
    """The generated reasoning, verdict and region: the text up to and including ``</region>``
    (all of it where there is none), as a prefix the answers are then written after."""
    region_end = raw_output.find("</region>")
    return raw_output[: region_end + len("</region>")] if region_end >= 0 else raw_output.rstrip()


def answer_prefix(raw_output: str) -> str:
    """The generated text up to and including the first ``<answer>`` (added when missing)."""
    position = raw_output.find(ANSWER_OPEN)
    if position >= 0:
        return raw_output[: position + len(ANSWER_OPEN)]
    region_end = raw_output.rfind("</region>")
    kept = raw_output[: region_end + len("</region>")] if region_end >= 0 else raw_output
    return kept.rstrip() + "\n" + ANSWER_OPEN


class JudoMMADAnswerer:
    """Answers MMAD questions with a JUDO checkpoint (1-shot: the first reference image).

    ``mode="generate"`` maps the generated answer text to an option; ``"guided"`` decodes
    the answer as one of the options' texts (:class:`ChoiceConstraint`), so a model that
    would name a non-option must pick its likeliest option token by token; ``"likelihood"``
    keeps the generated reasoning and region, then picks the option with the highest
    length-normalized log-likelihood. The reply text ends with the letter, because MMAD's
    scorer reads the last standalone capital A-E; the predicted boxes go along (0-1
    coordinates) for the harness's grounding metrics, with the refined mask and the anomaly
    map when the model object can give them (``grounding(query_image, boxes)``, as
    :class:`judo_model.training.answerer.JuxtaposedJudo` does).

    ``verdict_first`` writes the reasoning, verdict and region as the pipeline does, without
    the question in the prompt, and then the answer after them with the question: a question in
    the prompt moved the tiny model's own verdict (measured: "defective" for 12 of 40 normal
    images with the Anomaly Detection question, 5 without), and every answer is then about the
    verdict the pipeline would give.
    """

    def __init__(self, judo: JudoModel, name: str, mode: str = "generate", max_new_tokens: int = 128,
                 verdict_first: bool = False):
        if mode not in ANSWER_MODES:
            raise ValueError(f"mode must be one of {', '.join(ANSWER_MODES)}, got {mode!r}")
        self.judo = judo
        self.name = name
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.verdict_first = verdict_first

    def answer(self, query) -> GroundedAnswer:
        options: Mapping[str, str] = dict(query.options)
        question = Question(query.question, options)
        references = list(query.reference_paths or [])
        prompt_kwargs = dict(
            reference_image=references[0] if references else None,
            query_image=query.image_path,
            domain_knowledge=query.domain_knowledge,
        )
        guided = list(options.values()) if self.mode == "guided" else None
        prefix = ""
        if self.verdict_first:
            verdict, _ = self.judo.generate(max_new_tokens=self.max_new_tokens, **prompt_kwargs)
            prefix = verdict_prefix(verdict)
        raw, parsed = self.judo.generate(questions=[question], max_new_tokens=self.max_new_tokens,
                                         answer_options=guided, prefix=prefix, **prompt_kwargs)
        if self.mode == "likelihood":
            scores = self.judo.score_options(
                question=question, reasoning_prefix=answer_prefix(raw), length_normalized=True, **prompt_kwargs
            )
            letter = max(scores, key=scores.get)
            stated = options[letter]
        else:
            stated = parsed.answers[0] if parsed.answers else raw
            letter = choose_option(stated, options)
        text = f"{stated}\nAnswer: {letter}" if letter else stated
        readable = parsed.checks["region"] and parsed.checks["boxes"]
        boxes = [tuple(v / COORDINATE_SCALE for v in box) for box in parsed.boxes] if readable else []
        mask = anomaly_map = None
        if hasattr(self.judo, "grounding"):
            mask, anomaly_map = self.judo.grounding(query.image_path, parsed.boxes if readable else ())
        return GroundedAnswer(text=text, boxes=boxes, mask=mask, anomaly_map=anomaly_map)


def load_mmad_answerer(path: str | Path, mode: str = "generate", max_new_tokens: int = 128,
                       data_dir: str | Path | None = None, questions_file: str = "mmad.json",
                       verdict_first: bool = False):
    """An MMAD answerer for the checkpoint folder at ``path``.

    A ``judo train`` checkpoint is prompted exactly as in training (image sizes, prefilter
    evidence from ``data_dir``) through :mod:`judo_model.training.answerer`.
    """
    from judo_model.training.pipeline import read_training_log

    path = Path(path)
    if read_training_log(path):
        from judo_model.training.answerer import load_juxtaposed_answerer

        return load_juxtaposed_answerer(path, data_dir, max_new_tokens=max_new_tokens, mode=mode,
                                        name=f"judo-{path.name}-{mode}", questions_file=questions_file,
                                        verdict_first=verdict_first)
    return JudoMMADAnswerer(JudoModel.load(path), name=f"judo-{path.name}-{mode}", mode=mode, max_new_tokens=max_new_tokens,
                            verdict_first=verdict_first)
