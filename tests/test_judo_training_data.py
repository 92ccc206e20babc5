"""JUDO training data: note reading, stage batches, targets, encoding and the prefilter evidence."""

from __future__ import annotations

import json
import random
import re
import shutil
import zlib
from dataclasses import asdict

import numpy as np
import pytest
import torch

from judo_model.data import questions as mmad
from judo_model.data.knowledge import CATEGORY_FACTS, category_facts, defect_title, product_title
from judo_model.imaging import load_image
from judo_model.mmad.format import DEFECT_QUESTION_TYPES
from judo_model.modeling import load_model
from judo_model.prefilter.references import DEFECTS_SUBDIR, REFERENCES_SUBDIR, DefectExemplars, ProductExemplars
from judo_model.processing import build_processor
from judo_model.rewards import answer_accuracy_reward
from judo_model.runtime.evidence import PANEL, evidence_note, hottest_boxes, refine_region, render_evidence
from judo_model.runtime.inputs import PromptOptions, TRAINING_FILE, prompt_options_of
from judo_model.runtime.output import boxes_to_mask, parse_output
from judo_model.runtime.prompting import encode_for_training, prompt_text
from judo_model.training.answerer import JuxtaposedJudo, mmad_templates
from judo_model.training.data import (BalancedSampler, defect_titles, endorsed_boxes, example_prompt,
                                      ground_truth_mask, target_for)
from judo_model.training.encoding import CachedEncoder
from judo_model.training.evidence import (BANKS_FOLDER, HINT_DROPOUT, PRODUCTS_FOLDER, BankEvidence, evidence_dir,
                                          load_evidence)
from judo_model.training.grpo import grpo_rows, json_options
from judo_model.training.note_reading import NoteReadingSampler, invented_products
from judo_model.training.pipeline import prompt_options
from judo_model.training.recipe import Recipe, SegStage, SftStage
from judo_model.training.sft import question_pairs, segmentation_pairs

from tests.training_support import CATEGORIES, data_dir, examples  # noqa: F401 (fixtures)


def test_note_reading_targets_repeat_the_note(examples):
    sampler = NoteReadingSampler(defect_titles(examples), seed=3)
    seen = {True: 0, False: 0}
    for prompt, target in sampler.batch(200):
        assert prompt.images == [] and prompt.image_roles == ()
        text = prompt.messages[0]["content"][-1]["text"]
        note = re.search(r"Prefilter: anomaly score [\d.]+ x threshold \((above|below)\), hottest at (\[[^\]]+\])\."
                         r"(?: Nearest labelled defect: ([^.]+)\.)?", text)
        assert note, text
        parsed = parse_output(target)
        assert parsed.ok, parsed.parse_error
        assert parsed.defect is (note.group(1) == "above")
        seen[parsed.defect] += 1
        if parsed.defect:
            assert [list(b) for b in parsed.boxes] == [json.loads(note.group(2))]
            assert parsed.defect_type == note.group(3)
        else:
            assert parsed.boxes == ()
    assert min(seen.values()) > 40, seen
    assert "Image 3 is the prefilter's evidence" in "".join(
        part["text"] for part in prompt.messages[0]["content"] if part["type"] == "text")
    assert "<|image_pad|>" not in prompt_text(build_processor(), prompt)


def test_note_reading_shares_of_defects_and_hints_follow_the_recipe(examples):
    titles = defect_titles(examples)
    for above, hinted in ((0.74, 0.8), (0.85, 0.95), (0.0, 0.0)):
        parsed = [parse_output(t) for _, t in NoteReadingSampler(titles, seed=5, above_share=above,
                                                                hint_share=hinted).batch(1000)]
        defects = [p for p in parsed if p.defect]
        assert abs(len(defects) / 1000 - above) < 0.05
        if defects:
            assert abs(sum(p.defect_type is not None for p in defects) / len(defects) - hinted) < 0.05
    with pytest.raises(ValueError, match="hint_share"):
        NoteReadingSampler(titles, hint_share=1.5)


@pytest.mark.parametrize("weights", [None, (1, 1, 1, 1, 1, 1), (1, 1, 1, 1, 3, 3)])
def test_notes_naming_a_product_ask_questions_the_note_answers(examples, weights):
    """With the recipe's product_note, a note names a product and one of its defect types, and
    some notes carry one MMAD question whose right option the note (and the knowledge) gives;
    weighted, each kind comes as often as its weight says and Anomaly Detection is yes half the time."""
    sampler = NoteReadingSampler(defect_titles(examples), seed=2, categories=CATEGORIES, question_share=0.6,
                                 question_weights=weights)
    products = {category_facts(c).display_name: category_facts(c) for c in CATEGORIES}
    asked, anomaly_answers = {}, []
    for prompt, target in sampler.batch(300):
        text = prompt.messages[0]["content"][-1]["text"]
        note = re.search(r"\((above|below)\).*?(?: Nearest labelled defect: ([^.]+)\.)? Nearest known product: "
                         r"([^.]+)\.", text)
        assert note, text
        facts = products[note.group(3)]
        if note.group(2):
            assert note.group(2) in {d.title for d in facts.defects.values()}, "the type is one of the product's"
        parsed = parse_output(target)
        assert parsed.ok and parsed.defect is (note.group(1) == "above")
        question = re.search(r"Question 1: (.+)", text)
        if not question:
            assert parsed.answers == ()
            continue
        asked[question.group(1)] = asked.get(question.group(1), 0) + 1
        options = dict(re.findall(r"^([A-D]): (.+)$", text, re.M))
        assert parsed.answers[0] in options.values()
        if "kind of product" in question.group(1):
            assert parsed.answers[0] == note.group(3)
        elif "Is there any defect" in question.group(1):
            assert parsed.answers[0] == ("Yes." if parsed.defect else "No.")
            anomaly_answers.append(parsed.answers[0])
        elif "appearance" in question.group(1):
            assert parsed.answers[0] in {d.appearance for d in facts.defects.values() if d.title == note.group(2)}
    assert 120 <= sum(asked.values()) <= 240 and len(asked) == 6, asked
    if weights:
        anomaly, appearance = asked[mmad.ANOMALY_QUESTION], asked[mmad.DESCRIPTION_QUESTION]
        assert weights[4] / weights[0] / 2 <= appearance / anomaly <= weights[4] / weights[0] * 2, asked
        assert max(asked.values()) <= 2 * max(weights) / min(weights) * min(asked.values()), asked
        assert 0.3 <= anomaly_answers.count("Yes.") / len(anomaly_answers) <= 0.7, anomaly_answers
    with pytest.raises(ValueError, match="categories"):
        NoteReadingSampler(defect_titles(examples), question_share=0.5)
    with pytest.raises(ValueError, match="question_weights"):
        NoteReadingSampler(defect_titles(examples), categories=CATEGORIES, question_weights=(1, 1))


def test_invented_products_teach_copying_a_name_never_trained_on(examples):
    """Notes naming an invented product carry no defect hint, ask only what the note answers
    (defective? which product?), and no invented name shares a word with a catalogue product,
    held-out ones included."""
    listed = set(invented_products())
    catalogue = {word for facts in CATEGORY_FACTS.values() for word in facts.display_name.lower().split()}
    known = {facts.display_name for facts in CATEGORY_FACTS.values()}
    assert len(listed) >= 100 and not any(catalogue & set(name.split()) for name in listed)
    sampler = NoteReadingSampler(defect_titles(examples), seed=3, categories=CATEGORIES, question_share=0.5,
                                 question_weights=(1, 1, 1, 1, 1, 1), unseen_share=0.5)
    seen_unseen, asked, names = 0, set(), []
    for prompt, target in sampler.batch(200):
        text = prompt.messages[0]["content"][-1]["text"]
        product = re.search(r"Nearest known product: ([^.]+)\.", text).group(1)
        if product in known:
            continue
        seen_unseen += 1
        names.append(product)
        assert not catalogue & set(product.split())
        assert product in listed
        assert "Nearest labelled defect" not in text, "an invented product has no defect library"
        parsed = parse_output(target)
        assert parsed.ok and parsed.defect_type is None
        question = re.search(r"Question 1: (.+)", text)
        if question:
            asked.add(question.group(1))
            if question.group(1) == mmad.OBJECT_QUESTION:
                assert parsed.answers == (product,)
            else:
                assert parsed.answers == ("Yes." if parsed.defect else "No.",)
    assert 60 <= seen_unseen <= 140 and asked == {mmad.OBJECT_QUESTION, mmad.ANOMALY_QUESTION}
    assert len(set(names)) > 10, "the invented names vary"
    with pytest.raises(ValueError, match="categories"):
        NoteReadingSampler(defect_titles(examples), unseen_share=0.5)


def test_the_product_line_is_shown_only_to_checkpoints_trained_with_it(data_dir):
    evidence = load_evidence(data_dir)
    manifest = json.loads((data_dir / "splits.json").read_text())
    key = next(e["key"] for e in manifest["images"] if e["split"] == "test")
    query = load_image(data_dir / key)
    assert "Nearest known product" not in evidence.inputs(key, query).note
    assert evidence.inputs(key, query, with_product=True).note.endswith(
        f"Nearest known product: {evidence.products[key]}.")

    for product_note in (False, True):
        checkpoint = data_dir / f"log-{product_note}"
        checkpoint.mkdir(exist_ok=True)
        (checkpoint / TRAINING_FILE).write_text(json.dumps({"recipe": asdict(Recipe(product_note=product_note))}))
        assert prompt_options_of(checkpoint).product_note is product_note
        assert prompt_options(Recipe(product_note=product_note), True).product_note is product_note


def test_stage_batches_replay_notes_and_can_name_the_notes_type(data_dir, examples):
    evidence = load_evidence(data_dir)
    notes = NoteReadingSampler(defect_titles(examples), seed=1)
    pairs = segmentation_pairs(examples, PromptOptions(), evidence, SegStage(note_replay=0.25), seed=0,
                               type_from_note=True, notes=notes)(400)
    text_only = [p for p, *_ in pairs if not p.images]
    assert 60 <= len(text_only) <= 140, "about a quarter of the batch reads notes without images"
    hinted = [(p, parse_output(t)) for p, t, *_ in pairs if p.images and "Nearest labelled defect: " in str(p.messages)]
    named = [(p, parsed) for p, parsed in hinted if parsed.defect]
    assert named, "some defective images carry a defect hint"
    for prompt, parsed in named:
        assert f"Nearest labelled defect: {parsed.defect_type}." in str(prompt.messages)


def test_stage2_batches_replay_stage1_and_answer_with_the_notes_type(data_dir, examples):
    """Stage 2 draws a share of question-free Stage 1 examples; its verdicts and Defect
    Classification answers name the note's type where the note names one (and it is an option)."""
    evidence = load_evidence(data_dir)
    stage = SftStage(single_question=1.0, replay=0.3)
    pairs = question_pairs(examples, PromptOptions(), evidence, stage, seed=4, type_from_note=True)(400)
    texts = [prompt.messages[0]["content"][-1]["text"] for prompt, _ in pairs]
    assert 80 <= sum("Question 1: " not in text for text in texts) <= 160, "about 30 % replay Stage 1"
    answered = 0
    for text, (_, target) in zip(texts, pairs):
        hint = re.search(r"Nearest labelled defect: ([^.]+)\.", text)
        parsed = parse_output(target)
        if hint and parsed.defect:
            assert parsed.defect_type == hint.group(1)
        if hint and mmad.CLASSIFICATION_QUESTION in text and hint.group(1) in re.findall(r"^[A-D]: (.+)$", text, re.M):
            assert parsed.answers == (hint.group(1),)
            answered += 1
    assert answered, "some Defect Classification questions come with a hinted note"


def test_defect_classification_answer_can_name_another_type(examples):
    example = next(e for e in examples if not e.is_normal and "Defect Classification" in e.question_types)
    asked = example.question_types.index("Defect Classification")
    other = next(text for letter, text in example.questions[asked].options.items()
                 if letter != example.answer_letters[asked])
    answers = parse_output(target_for(example, answered_type=other)).answers
    assert answers[asked] == other
    assert [a for i, a in enumerate(answers) if i != asked] == \
        [a for i, a in enumerate(example.answer_texts) if i != asked], "the other answers keep the truth"
    assert parse_output(target_for(example, answered_type="Not An Option")).answers == tuple(example.answer_texts)


def test_targets_follow_the_contract_and_cover_the_mask(examples):
    defective = next(e for e in examples if not e.is_normal)
    normal = next(e for e in examples if e.is_normal)
    for example in (defective, normal):
        parsed = parse_output(target_for(example))
        assert parsed.ok, parsed.parse_error
        assert parsed.answers == tuple(example.answer_texts)
        assert not any(len(a) == 1 and a.isupper() for a in parsed.answers), "answers are content, not letters"
    parsed = parse_output(target_for(defective))
    mask = ground_truth_mask(defective)
    assert parsed.defect and parsed.defect_type
    assert (boxes_to_mask(parsed.boxes, *mask.shape) & mask).sum() >= 0.9 * mask.sum() * 0.5
    assert parse_output(target_for(normal)).boxes == ()


def test_balanced_sampler_leaves_the_verdict_to_the_images(examples):
    """Prompts without MMAD's "There is a defect" questions are half normal, half defective."""
    draws = BalancedSampler(examples, seed=0).batch(1200)
    neutral = [d for d in draws if not set(d.question_types) & set(DEFECT_QUESTION_TYPES)]
    assert 0.44 < np.mean([d.is_normal for d in neutral]) < 0.56
    detection = [d for d in draws if "Anomaly Detection" in d.question_types]
    assert 0.44 < np.mean([d.is_normal for d in detection]) < 0.56
    assert {len(d.questions) == 1 for d in draws} == {True, False}
    assert all(not d.questions for d in BalancedSampler(examples, questions=False).batch(20))
    replayed = BalancedSampler(examples, seed=1, replay=0.3).batch(1000)
    assert 0.25 < np.mean([not d.questions for d in replayed]) < 0.35, "Stage 1 replay inside the QA stage"
    assert 0.44 < np.mean([d.is_normal for d in replayed if not d.questions]) < 0.56


def test_cached_encoder_matches_the_processor(data_dir, examples):
    _, processor = load_model("tiny")
    encoder = CachedEncoder(processor)
    evidence = load_evidence(data_dir)
    rng = random.Random(0)
    for example in examples[:4]:
        prompt = example_prompt(example, PromptOptions(domain_knowledge_prob=0.5), evidence, rng)
        expected = encode_for_training(processor, prompt, target_for(example))
        for _ in range(2):  # second time from the image cache
            got = encoder.encode(prompt, target_for(example))
            assert set(expected) <= set(got)
            for key in expected:
                assert torch.equal(expected[key], got[key]), key


def test_targets_endorse_a_matching_evidence_box_verbatim():
    truth = [(100, 100, 300, 300), (600, 600, 700, 700)]
    assert endorsed_boxes(truth, (600, 600, 725, 700)) == [(600, 600, 725, 700), (100, 100, 300, 300)]
    assert endorsed_boxes(truth, (0, 0, 50, 50)) == truth, "a prefilter box off the defect is corrected"
    assert endorsed_boxes(truth, None) == truth
    assert endorsed_boxes([], (0, 0, 50, 50)) == []


def test_evidence_inputs(data_dir, examples):
    evidence = load_evidence(data_dir)
    assert set(evidence.thresholds) == set(CATEGORIES)
    example = examples[0]
    query = load_image(data_dir / example.key)
    assert evidence.anomaly_map(example.key).shape == query.shape[:2]
    assert evidence.inputs(example.key, query, "heat").image.size == (PANEL, PANEL)
    crop_only = evidence.inputs(example.key, query, "heat_crop")
    assert crop_only.image.size == (2 * PANEL, PANEL) and crop_only.note is None
    with_text = evidence.inputs(example.key, query, "heat_crop_text")
    assert with_text.image.tobytes() == crop_only.image.tobytes()
    assert with_text.note.startswith("Prefilter: anomaly score ") and "hottest at [" in with_text.note
    hint = evidence.hints.get(example.key)
    assert (hint is not None) == ("Nearest labelled defect: " in with_text.note)
    with pytest.raises(ValueError):
        render_evidence(query, evidence.anomaly_map(example.key), 1.0, "nope")


def test_training_images_are_labelled_by_the_other_defect_exemplars(data_dir):
    """Every labelled training defect sits in its category's exemplar library, and its hint comes
    from the others (leave one out), so training hints are as fallible as test-time ones."""
    evidence = load_evidence(data_dir)
    manifest = json.loads((data_dir / "splits.json").read_text())
    for category in CATEGORIES:
        library = DefectExemplars.load(evidence_dir(data_dir) / BANKS_FOLDER / category / REFERENCES_SUBDIR
                                       / DEFECTS_SUBDIR)
        labelled = [e for e in manifest["images"]
                    if e["category"] == category and e["split"] == "train" and e["label"] != "good"]
        assert sorted(library.ids) == sorted(e["key"] for e in labelled)
        assert set(library.labels) <= {defect_title(category, e["label"]) for e in labelled}
        assert library.vote(library.descriptors, k=1) == library.labels, "each exemplar is its own nearest"
        position = {key: i for i, key in enumerate(library.ids)}
        alone = library.vote(library.descriptors, exclude=list(range(len(library))))
        for entry in labelled:
            dropped = zlib.crc32(entry["key"].encode()) % HINT_DROPOUT == 0
            expected = None if dropped else alone[position[entry["key"]]]
            assert evidence.hints.get(entry["key"]) == expected
        tests = [e["key"] for e in manifest["images"] if e["category"] == category and e["split"] == "test"]
        assert all(evidence.hints[key] in library.labels for key in tests), "every test image gets a hint"


def test_products_are_named_by_the_nearest_normal_images_of_every_known_product(data_dir):
    """The product library holds every category's normal training images; each image's product
    comes from the others (leave one out), one training image in HINT_DROPOUT is shown without
    it, and the library reloads to name a new image's product the same way."""
    evidence = load_evidence(data_dir)
    manifest = json.loads((data_dir / "splits.json").read_text())
    library = ProductExemplars.load(evidence_dir(data_dir) / PRODUCTS_FOLDER)
    normal_train = [e for e in manifest["images"] if e["split"] == "train" and e["label"] == "good"]
    assert sorted(library.ids) == sorted(e["key"] for e in normal_train)
    assert set(library.labels) == {product_title(category) for category in CATEGORIES}
    for entry in normal_train:
        if zlib.crc32(f"product:{entry['key']}".encode()) % HINT_DROPOUT == 0:
            assert entry["key"] not in evidence.products
    tests = [e for e in manifest["images"] if e["split"] == "test"]
    right = sum(evidence.products[e["key"]] == product_title(e["category"]) for e in tests)
    assert right >= 0.9 * len(tests), f"pretrained features name the product of {right} of {len(tests)} test images"
    probe = tests[0]
    assert library.product_of(load_image(data_dir / probe["key"])) == evidence.products[probe["key"]]


def test_live_evidence_names_the_product_only_when_asked_and_scores_a_query_once(data_dir, tmp_path):
    """An MMAD folder's product library is built only for checkpoints that read it, and grounding
    an answer reuses the anomaly map its prompt was built from."""
    plain = tmp_path / "mmad-folder"
    shutil.copytree(data_dir, plain, ignore=shutil.ignore_patterns("evidence"))
    banks = BankEvidence(tmp_path / "banks", mmad_templates(plain))
    judo = JuxtaposedJudo(judo=None, options=PromptOptions(), banks=banks)
    manifest = json.loads((plain / "splits.json").read_text())
    entry = next(e for e in manifest["images"] if e["split"] == "test" and e["label"] != "good")
    path, query = plain / entry["key"], load_image(plain / entry["key"])

    anomaly_map, threshold, _, product = judo.evidence(path, query)
    assert product is None and not (tmp_path / "banks" / PRODUCTS_FOLDER).exists()
    calls = []
    original = banks.evidence
    banks.evidence = lambda *args: calls.append(args) or original(*args)
    again = judo.evidence(path, query)
    assert not calls and again[0] is anomaly_map and again[1] == threshold
    named = judo.evidence(path, query, with_product=True)[3]
    assert len(calls) == 1 and (tmp_path / "banks" / PRODUCTS_FOLDER).is_dir()
    assert named == product_title(entry["category"])
    assert judo.evidence(path, query)[3] is None and len(calls) == 1
    assert judo.evidence(path, np.ascontiguousarray(query[::-1]))[0] is not anomaly_map and len(calls) == 2


def test_evidence_note_states_the_score_and_the_hottest_box():
    anomaly_map = np.zeros((100, 200), np.float32)
    anomaly_map[20:40, 100:150] = 3.0
    anomaly_map[25:30, 110:120] = 4.0
    assert hottest_boxes(anomaly_map, threshold=2.0) == [(550, 250, 600, 300)]
    assert evidence_note(anomaly_map, 2.0) == \
        "Prefilter: anomaly score 2.0 x threshold (above), hottest at [550, 250, 600, 300]."
    assert evidence_note(anomaly_map * 0.1, 2.0).startswith("Prefilter: anomaly score 0.2 x threshold (below)")
    assert evidence_note(anomaly_map, 2.0, "Broken Thread").endswith(
        "hottest at [550, 250, 600, 300]. Nearest labelled defect: Broken Thread.")
    with_product = evidence_note(anomaly_map, 2.0, "Broken Thread", "woven fabric")
    assert with_product == evidence_note(anomaly_map, 2.0, "Broken Thread") + " Nearest known product: woven fabric."
    region = refine_region([(450, 100, 800, 500)], 100, 200, anomaly_map)
    assert region.sum() == 20 * 50 and region[20:40, 100:150].all()


def test_grpo_rows_carry_the_guide_and_the_ground_truth(data_dir, examples):
    evidence = load_evidence(data_dir)
    rows = grpo_rows(examples, PromptOptions(), evidence, 12, seed=2)
    assert rows == grpo_rows(examples, PromptOptions(), evidence, 12, seed=2), "the seed fixes the rows"
    assert any(row["mask"] for row in rows) and any(not row["mask"] for row in rows)
    assert all(bool(row["mask"]) == bool(row["gt_boxes"]) for row in rows), "defective rows carry both"
    known_types = set(defect_titles(examples))
    guides = [json.loads(row["guide"]) for row in rows]
    for row, guide in zip(rows, guides):
        assert guide["answer_options"] == list(json.loads(row["options"]).values())
    assert all(guide["defect_types"] and set(guide["defect_types"]) <= known_types for guide in guides)


def test_grpo_options_are_decoded_for_the_reward_functions():
    reward = json_options(answer_accuracy_reward)
    completion = "<think>x</think>\n<defect>no</defect>\n<region>[]</region>\n<answer>No.</answer>"
    assert reward([completion], answer=["B"], options=[json.dumps({"A": "Yes.", "B": "No."})]) == [1.0]
