"""JUDO checkpoints as MMAD answerers, and the loader the harness uses for any ``--model``.

:class:`JudoMMADAnswerer` asks a :class:`judo_model.runtime.JudoModel` (or a
:class:`judo_model.training.answerer.JuxtaposedJudo`, which adds the training-time image sizes
and prefilter evidence) one MMAD question and returns the letter with the predicted region.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from judo_model.mmad.answerers import (ANSWER_ENGINES, ANSWER_MODES, RANDOM_BASELINE, Answerer, AnswererNotAvailable,
                                       GroundedAnswer, RandomAnswerer)
from judo_model.runtime.inference import JudoModel, answer_prefix
from judo_model.runtime.inputs import prompt_options_of, read_training_log
from judo_model.runtime.output import COORDINATE_SCALE, choose_option
from judo_model.runtime.questions import Question
from judo_model.runtime.vllm_engine import VllmJudo
from judo_model.training.answerer import JuxtaposedJudo, mmad_templates, template_banks_dir
from judo_model.training.evidence import BANKS_FOLDER, MAPS_FILE, BankEvidence, evidence_dir, load_evidence


def load_judo(checkpoint: str | Path, engine: str = "transformers", mode: str = "generate"):
    """The checkpoint on ``engine``: :class:`JudoModel` (transformers) or :class:`VllmJudo` (vLLM, in the
    engine environment); both answer :meth:`JudoModel.generate` with the same prompt, slots and parser."""
    if engine not in ANSWER_ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ANSWER_ENGINES)}, got {engine!r}")
    if engine == "transformers":
        return JudoModel.load(checkpoint)
    if mode == "likelihood":
        raise ValueError("mode likelihood scores options with the transformers engine only (engine vllm: "
                         "use generate or guided)")
    return VllmJudo(checkpoint)


def verdict_prefix(raw_output: str) -> str:
    """The generated reasoning, verdict and region: the text up to and including ``</region>``
    (all of it where there is none), as a prefix the answers are then written after."""
    region_end = raw_output.find("</region>")
    return raw_output[: region_end + len("</region>")] if region_end >= 0 else raw_output.rstrip()


class JudoMMADAnswerer:
    """Answers MMAD questions with a JUDO checkpoint (1-shot: the first reference image).

    ``mode="generate"`` maps the generated answer text to an option; ``"guided"`` decodes
    the answer as one of the options' texts (:class:`judo_model.runtime.ChoiceConstraint`), so a model
    that would name a non-option must pick its likeliest option token by token; ``"likelihood"``
    keeps the generated reasoning and region, then picks the option with the highest
    length-normalized log-likelihood. The reply text ends with the letter, because MMAD's
    scorer reads the last standalone capital A-E; the predicted boxes go along (0-1
    coordinates) for the harness's grounding metrics, with the refined mask and the anomaly
    map when the model object can give them (``grounding(query_image, boxes)``, as
    :class:`JuxtaposedJudo` does).

    ``verdict_first`` writes the reasoning, verdict and region as the pipeline does, without
    the question in the prompt, and then the answer after them with the question, so every answer
    is about the verdict the pipeline would give (a question in the prompt can move the tiny
    model's own verdict; measured in docs/judo_model.md).
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


def load_juxtaposed_answerer(checkpoint: str | Path, data_dir: str | Path | None = None,
                             max_new_tokens: int = 96, name: str | None = None, mode: str = "generate",
                             questions_file: str = "mmad.json", verdict_first: bool = False,
                             engine: str = "transformers") -> JudoMMADAnswerer:
    """An MMAD answerer for a ``judo train`` checkpoint (``verdict_first``: see :class:`JudoMMADAnswerer`)
    generating on ``engine`` (:func:`load_judo`).

    Evidence comes from ``data_dir``'s cache and banks when ``judo train`` prepared them
    there; for any other MMAD-format folder, banks are fitted on its normal templates.
    """
    checkpoint = Path(checkpoint)
    options = prompt_options_of(checkpoint)
    cache = banks = None
    if options.evidence_route:
        if data_dir is None:
            raise ValueError(f"{checkpoint} was trained with prefilter evidence; give the data folder")
        if (evidence_dir(data_dir) / MAPS_FILE).is_file():
            cache = load_evidence(data_dir)
            banks = BankEvidence(evidence_dir(data_dir) / BANKS_FOLDER)
        else:
            banks = BankEvidence(template_banks_dir(data_dir), mmad_templates(data_dir, questions_file))
    judo = JuxtaposedJudo(load_judo(checkpoint, engine, mode), options, cache, banks)
    return JudoMMADAnswerer(judo, name=name or f"judo-{checkpoint.name}", max_new_tokens=max_new_tokens, mode=mode,
                            verdict_first=verdict_first)


def load_mmad_answerer(path: str | Path, mode: str = "generate", max_new_tokens: int = 128,
                       data_dir: str | Path | None = None, questions_file: str = "mmad.json",
                       verdict_first: bool = False, engine: str = "transformers"):
    """An MMAD answerer for the checkpoint folder at ``path``.

    A ``judo train`` checkpoint is prompted exactly as in training (image sizes, prefilter
    evidence from ``data_dir``) through :func:`load_juxtaposed_answerer`.
    """
    path = Path(path)
    name = f"judo-{path.name}-{mode}" + ("-vllm" if engine == "vllm" else "")
    if read_training_log(path):
        return load_juxtaposed_answerer(path, data_dir, max_new_tokens=max_new_tokens, mode=mode, name=name,
                                        questions_file=questions_file, verdict_first=verdict_first, engine=engine)
    return JudoMMADAnswerer(load_judo(path, engine, mode), name=name, mode=mode,
                            max_new_tokens=max_new_tokens, verdict_first=verdict_first)


def load_answerer(spec: str, seed: int = 0, data_dir: str | Path | None = None,
                  questions_file: str = "mmad.json", mode: str = "generate", verdict_first: bool = False,
                  engine: str = "transformers") -> Answerer:
    """``baseline:random`` gives :class:`RandomAnswerer`; anything else is a checkpoint path.

    Checkpoints are loaded by :func:`load_mmad_answerer`; ``data_dir`` (the evaluated folder)
    gives checkpoints trained with prefilter evidence their banks; ``verdict_first``: see
    :class:`JudoMMADAnswerer`; ``engine``: :func:`load_judo`.
    """
    if spec == RANDOM_BASELINE:
        return RandomAnswerer(seed)
    if spec.startswith("baseline:"):
        raise AnswererNotAvailable(f"unknown baseline {spec!r}; available: {RANDOM_BASELINE}")
    return load_mmad_answerer(Path(spec), mode=mode, data_dir=data_dir, questions_file=questions_file,
                              verdict_first=verdict_first, engine=engine)
