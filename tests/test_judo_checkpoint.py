"""The shipped tiny JUDO checkpoint: loads offline and finds a known synthetic defect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from judo_model.data.knowledge import category_facts
from judo_model.data.synth.writer import generate_dataset
from judo_model.imaging import load_mask
from judo_model.mmad.format import MMADDataset
from judo_model.runtime.inference import JudoModel
from judo_model.runtime.inputs import prompt_options_of
from judo_model.runtime.questions import Question
from judo_model.runtime.constraints import ChoiceConstraint, DEFECT_YES, RowChoiceConstraints
from judo_model.runtime.output import ANSWER_OPEN, boxes_to_mask, choose_option
from judo_model.training.answerer import JuxtaposedJudo
from judo_model.training.evidence import load_evidence, prepare_evidence

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "judo-tiny"
#: A defective test image of the training data's recipe (seed 0, 80 images per category,
#: 224 px), regenerated here from the seed.
KNOWN_CATEGORY = "fabric"
KNOWN_IMAGE = "Synthetic/fabric/test/hole/0072.png"

pytestmark = pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(),
                                reason="checkpoints/judo-tiny not shipped in this tree")


@pytest.fixture(scope="module")
def judo():
    return JudoModel.load(CHECKPOINT)


@pytest.fixture(scope="module")
def known_data(tmp_path_factory):
    """The known image's category, regenerated exactly, with its prefilter bank and evidence."""
    root = tmp_path_factory.mktemp("judo-known")
    generate_dataset(root, seed=0, categories=[KNOWN_CATEGORY], images_per_category=80, size=224, heldout=[],
                     workers=1)
    prepare_evidence(root)
    return root


def test_checkpoint_is_a_small_standard_folder(judo):
    files = {p.name for p in CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "processor_config.json", "judo_training.json"} <= files
    assert (CHECKPOINT / "model.safetensors").stat().st_size < 20 * 2**20
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert judo.model.generation_config.do_sample is False
    stages = [s["stage"] for s in json.loads((CHECKPOINT / "judo_training.json").read_text())["stages"]]
    assert stages == ["note", "seg", "sft"]  # Stage 3 is not applied to the shipped model: docs/judo_training.md


def _answer_known_image(judo, known_data, question_type="Anomaly Detection", guided=False, **generate_options):
    item = next(i for i in MMADDataset(known_data, "mmad.json") if i.key == KNOWN_IMAGE)
    juxtaposed = JuxtaposedJudo(judo, prompt_options_of(CHECKPOINT), load_evidence(known_data))
    detection = next(q for q in item.record.conversation if q.type == question_type)
    question = Question(detection.Question, dict(detection.Options))
    if guided:
        generate_options["answer_options"] = list(question.options.values())
    raw, parsed = juxtaposed.generate(item.template_paths(1)[0], item.image_path, questions=[question],
                                      **generate_options)
    return item, detection, raw, parsed


def test_known_defect_is_found(judo, known_data):
    item, detection, raw, parsed = _answer_known_image(judo, known_data)
    assert parsed.checks["tags"] and parsed.checks["order"] and parsed.checks["region"], raw
    assert parsed.defect is True and parsed.boxes, raw
    assert choose_option(parsed.answers[0], dict(detection.Options)) == detection.Answer, raw


def test_row_constraints_give_each_sampled_row_its_own_options(judo):
    """GRPO samples prompts asking different questions in one batch: each row keeps its own choices."""
    tokenizer = judo.processor.tokenizer
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = ids("<think>x")[:3]
    rows = RowChoiceConstraints([
        ChoiceConstraint.for_output(tokenizer, prompt_length=3, answer_options=["Yes", "No"]),
        ChoiceConstraint.for_output(tokenizer, prompt_length=3, answer_options=["Broken Thread", "Hole"]),
        None,
    ])
    answering = prompt + ids("<think>x</think>\n<defect>no</defect>\n<region>[]</region>" + ANSWER_OPEN)
    masked = rows(torch.tensor([answering] * 3), torch.zeros((3, len(tokenizer))))
    allowed = [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in masked]
    assert allowed[0] == {ids(" Yes")[0], ids(" No")[0]}
    assert allowed[1] == {ids(" Broken")[0], ids(" Hole")[0]}
    assert len(allowed[2]) == len(tokenizer), "a row without a constraint decodes freely"
    with pytest.raises(ValueError, match="batch of 2"):
        rows(torch.tensor([answering] * 2), torch.zeros((2, len(tokenizer))))


def test_choice_constraint_allows_only_the_products_types_and_the_options(judo):
    tokenizer = judo.processor.tokenizer
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    constraint = ChoiceConstraint.for_output(tokenizer, prompt_length=3, defect_types=["Hole", "Broken Thread"],
                                             answer_options=["Yes", "No", "Broken Thread"])
    prompt = ids("<think>x")[:3]
    assert constraint.allowed(ids("<think>x</think>")) is None
    opened = ids("<think>x</think>\n" + DEFECT_YES)
    assert constraint.allowed(opened) == sorted({ids(" Hole")[0], ids(" Broken")[0]})
    assert constraint.allowed(opened + ids(" Broken")) == [ids(" Thread")[0]]
    closed = opened + ids(" Broken Thread</defect>")
    assert constraint.allowed(closed) is None
    answering = closed + ids("<region>[]</region>" + ANSWER_OPEN)
    assert constraint.allowed(answering) == sorted({ids(" Yes")[0], ids(" No")[0], ids(" Broken")[0]})
    assert constraint.allowed(answering + ids(" Yes</answer>")) is None
    assert ChoiceConstraint.for_output(tokenizer, prompt_length=3) is None

    vocabulary = len(tokenizer)
    scores = torch.zeros((1, vocabulary))
    masked = constraint(torch.tensor([prompt + opened]), scores.clone())
    assert set(torch.nonzero(torch.isfinite(masked[0])).flatten().tolist()) == set(constraint.allowed(opened))
    free = constraint(torch.tensor([prompt + ids("<think>x")]), scores.clone())
    assert torch.equal(free, scores)


def test_guided_answers_are_always_one_of_the_options(judo, known_data):
    item = next(i for i in MMADDataset(known_data, "mmad.json") if i.key == KNOWN_IMAGE)
    for question_type in sorted({q.type for q in item.record.conversation}):
        _, question, raw, parsed = _answer_known_image(judo, known_data, question_type, guided=True)
        assert parsed.answers and parsed.answers[0] in dict(question.Options).values(), raw


def test_verdict_type_is_decoded_as_one_of_the_products_types(judo, known_data):
    evidence = load_evidence(known_data)
    library = evidence.defect_types[KNOWN_CATEGORY]
    assert set(library) == {d.title for d in category_facts(KNOWN_CATEGORY).defects.values()}
    item, _, raw, parsed = _answer_known_image(judo, known_data)
    assert parsed.defect and parsed.defect_type in library, raw
    raw, forced = _answer_known_image(judo, known_data, defect_types=["Broken Thread"])[2:]
    assert forced.defect and forced.defect_type == "Broken Thread", raw


def test_known_defect_is_boxed(judo, known_data):
    item, _, raw, parsed = _answer_known_image(judo, known_data)
    mask = load_mask(item.mask_path)
    assert (boxes_to_mask(parsed.boxes, *mask.shape) & mask).any(), raw


def test_known_defect_is_typed(judo, known_data):
    item, _, raw, parsed = _answer_known_image(judo, known_data)
    defect = item.key.split("/")[-2]
    assert parsed.defect_type == category_facts(KNOWN_CATEGORY).defects[defect].title, raw
