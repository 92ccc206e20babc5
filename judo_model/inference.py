"""Run a JUDO checkpoint: greedy generation, option likelihoods and the MMAD answerer.

Inference builds its prompt with the same :func:`judo_model.prompting.build_prompt` used
for training and reads outputs with the one :func:`judo_model.output.parse_output`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from judo_model.mmad.answerers import GroundedAnswer
from judo_model.modeling import load_checkpoint
from judo_model.output import COORDINATE_SCALE, ParsedOutput, choose_option, parse_output
from judo_model.processing import JudoProcessor
from judo_model.prompting import ImageLike, Question, build_prompt, prompt_text

DEFAULT_MAX_NEW_TOKENS = 256
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
DEFECT_YES, DEFECT_CLOSE = "<defect>yes:", "</defect>"


class DefectTypeConstraint:
    """Guided decoding of the verdict's type (``prefix_allowed_tokens_fn`` of ``generate``).

    Once the model has written ``<defect>yes:``, only the tokens of one of ``defect_types``
    followed by ``</defect>`` may come next; everything else is decoded freely. A verdict then
    never names a type its product does not have (the tiny model otherwise writes "Rust" for a
    hole in fabric), and among the product's own types the model's preference decides.
    """

    def __init__(self, tokenizer, defect_types: Sequence[str], prompt_length: int):
        if not defect_types:
            raise ValueError("a defect type constraint needs at least one type")
        self.opening = tokenizer(DEFECT_YES, add_special_tokens=False)["input_ids"]
        self.choices = [tokenizer(f" {name}{DEFECT_CLOSE}", add_special_tokens=False)["input_ids"]
                        for name in sorted(set(defect_types))]
        self.prompt_length = prompt_length
        self.everything = list(range(len(tokenizer)))

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        generated = input_ids[self.prompt_length:].tolist()
        width = len(self.opening)
        starts = [i for i in range(len(generated) - width + 1) if generated[i:i + width] == self.opening]
        if not starts:
            return self.everything
        written = generated[starts[-1] + width:]
        allowed = {choice[len(written)] for choice in self.choices
                   if len(choice) > len(written) and choice[:len(written)] == written}
        return sorted(allowed) if allowed else self.everything


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
        prompt = build_prompt(**prompt_kwargs)
        text = prompt_text(self.processor, prompt) + prompt_suffix
        return self.processor(text=[text], images=prompt.images, return_tensors="pt").to(self.device)

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
    ) -> tuple[str, ParsedOutput]:
        """Greedy-decode one answer; returns the raw text and its parse.

        ``defect_types`` (the product's known defect types) constrains the verdict's type to
        one of them (:class:`DefectTypeConstraint`); None decodes it freely.
        """
        inputs = self._inputs(
            reference_image=reference_image,
            query_image=query_image,
            evidence_image=evidence_image,
            evidence_note=evidence_note,
            questions=questions,
            domain_knowledge=domain_knowledge,
        )
        constraint = (DefectTypeConstraint(self.processor.tokenizer, defect_types, inputs["input_ids"].shape[1])
                      if defect_types else None)
        output_ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         prefix_allowed_tokens_fn=constraint)
        new_ids = output_ids[0, inputs["input_ids"].shape[1] :]
        raw = self.processor.tokenizer.decode(new_ids, skip_special_tokens=True)
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
        ``<option text></answer>``. ``length_normalized`` divides by the option's token count.
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
            letter: self._continuation_log_likelihood(base, text + ANSWER_CLOSE, length_normalized)
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


class JudoMMADAnswerer:
    """Answers MMAD questions with a JUDO checkpoint (1-shot: the first reference image).

    ``mode="generate"`` maps the generated answer text to an option; ``"likelihood"``
    keeps the generated reasoning and region, then picks the option with the highest
    length-normalized log-likelihood. The reply text ends with the letter, because MMAD's
    scorer reads the last standalone capital A-E; the predicted boxes go along (0-1
    coordinates) for the harness's grounding metrics, with the refined mask and the anomaly
    map when the model object can give them (``grounding(query_image, boxes)``, as
    :class:`judo_model.training.answerer.JuxtaposedJudo` does).
    """

    def __init__(self, judo: JudoModel, name: str, mode: str = "generate", max_new_tokens: int = 128):
        if mode not in ("generate", "likelihood"):
            raise ValueError(f"mode must be 'generate' or 'likelihood', got {mode!r}")
        self.judo = judo
        self.name = name
        self.mode = mode
        self.max_new_tokens = max_new_tokens

    def answer(self, query) -> GroundedAnswer:
        options: Mapping[str, str] = dict(query.options)
        question = Question(query.question, options)
        references = list(query.reference_paths or [])
        prompt_kwargs = dict(
            reference_image=references[0] if references else None,
            query_image=query.image_path,
            domain_knowledge=query.domain_knowledge,
        )
        raw, parsed = self.judo.generate(questions=[question], max_new_tokens=self.max_new_tokens, **prompt_kwargs)
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
                       data_dir: str | Path | None = None, questions_file: str = "mmad.json"):
    """An MMAD answerer for the checkpoint folder at ``path``.

    A ``judo train`` checkpoint is prompted exactly as in training (image sizes, prefilter
    evidence from ``data_dir``) through :mod:`judo_model.training.answerer`.
    """
    from judo_model.training.pipeline import read_training_log

    path = Path(path)
    if read_training_log(path):
        from judo_model.training.answerer import load_juxtaposed_answerer

        return load_juxtaposed_answerer(path, data_dir, max_new_tokens=max_new_tokens, mode=mode,
                                        name=f"judo-{path.name}-{mode}", questions_file=questions_file)
    return JudoMMADAnswerer(JudoModel.load(path), name=f"judo-{path.name}-{mode}", mode=mode, max_new_tokens=max_new_tokens)
