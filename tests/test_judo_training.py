"""JUDO training: encoding, targets, evidence, and a 2-step smoke run of every stage."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from judo_model.output import boxes_to_mask, parse_output
from judo_model.prompting import encode_for_training

CATEGORIES = ["bottle", "fabric"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Two categories, 20 images each, with cached evidence maps and banks."""
    from judo_model.data.synth.writer import generate_dataset
    from judo_model.training.evidence import prepare_evidence

    root = tmp_path_factory.mktemp("judo-train-data")
    generate_dataset(root, seed=3, categories=CATEGORIES, images_per_category=20, size=112, heldout=[], workers=1)
    prepare_evidence(root)
    return root


@pytest.fixture(scope="module")
def examples(data_dir):
    from judo_model.training.data import load_examples

    return load_examples(data_dir, "mmad_train.json")


@pytest.fixture(scope="module")
def smoke_checkpoint(data_dir, tmp_path_factory):
    from judo_model.training.pipeline import train
    from judo_model.training.recipe import Recipe

    out = tmp_path_factory.mktemp("judo-smoke") / "ckpt"
    recipe = Recipe(note_steps=2, note_batch_size=2, seg_steps=2, sft_steps=2, grpo_steps=2, batch_size=2, grpo_generations=2,
                    grpo_prompts_per_step=1, threads=1)
    log = train(data_dir, out, stage="all", recipe=recipe, curves_png=out.parent / "curves.png")
    return out, log


def test_note_reading_targets_repeat_the_note(examples):
    import re

    from judo_model.processing import build_processor
    from judo_model.prompting import prompt_text
    from judo_model.training.data import defect_titles
    from judo_model.training.note_reading import NoteReadingSampler

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
    from judo_model.training.data import defect_titles
    from judo_model.training.note_reading import NoteReadingSampler

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
    import re

    from judo_model.data import questions as mmad
    from judo_model.data.knowledge import category_facts
    from judo_model.training.data import defect_titles
    from judo_model.training.note_reading import NoteReadingSampler

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


@pytest.mark.parametrize("kind", ["listed", "random"])
def test_invented_products_teach_copying_a_name_never_trained_on(examples, kind):
    """Notes naming an invented product carry no defect hint, ask only what the note answers
    (defective? which product?), and no invented name shares a word with a catalogue product,
    held-out ones included. Random names are new at (almost) every draw."""
    import re

    from judo_model.data import questions as mmad
    from judo_model.data.knowledge import CATEGORY_FACTS
    from judo_model.training.data import defect_titles
    from judo_model.training.note_reading import NoteReadingSampler, invented_products

    listed = set(invented_products())
    catalogue = {word for facts in CATEGORY_FACTS.values() for word in facts.display_name.lower().split()}
    known = {facts.display_name for facts in CATEGORY_FACTS.values()}
    assert len(listed) >= 100 and not any(catalogue & set(name.split()) for name in listed)
    sampler = NoteReadingSampler(defect_titles(examples), seed=3, categories=CATEGORIES, question_share=0.5,
                                 question_weights=(1, 1, 1, 1, 1, 1), unseen_share=0.5, invented_names=kind)
    seen_unseen, asked, names = 0, set(), []
    for prompt, target in sampler.batch(200):
        text = prompt.messages[0]["content"][-1]["text"]
        product = re.search(r"Nearest known product: ([^.]+)\.", text).group(1)
        if product in known:
            continue
        seen_unseen += 1
        names.append(product)
        assert not catalogue & set(product.split())
        assert (product in listed) == (kind == "listed")
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
    if kind == "random":
        assert len(set(names)) >= 0.9 * len(names), "a new name nearly every time"
    with pytest.raises(ValueError, match="invented names"):
        NoteReadingSampler(defect_titles(examples), categories=CATEGORIES, unseen_share=0.5, invented_names="odd")


def test_the_product_line_is_shown_only_to_checkpoints_trained_with_it(data_dir):
    from judo_model.imaging import load_image
    from judo_model.training.evidence import load_evidence

    evidence = load_evidence(data_dir)
    manifest = json.loads((data_dir / "splits.json").read_text())
    key = next(e["key"] for e in manifest["images"] if e["split"] == "test")
    query = load_image(data_dir / key)
    assert "Nearest known product" not in evidence.inputs(key, query).note
    assert evidence.inputs(key, query, with_product=True).note.endswith(
        f"Nearest known product: {evidence.products[key]}.")

    from dataclasses import asdict

    from judo_model.training.pipeline import TRAINING_FILE, prompt_options, prompt_options_of
    from judo_model.training.recipe import Recipe

    for product_note in (False, True):
        checkpoint = data_dir / f"log-{product_note}"
        checkpoint.mkdir(exist_ok=True)
        (checkpoint / TRAINING_FILE).write_text(json.dumps({"recipe": asdict(Recipe(product_note=product_note))}))
        assert prompt_options_of(checkpoint).product_note is product_note
        assert prompt_options(Recipe(product_note=product_note), True).product_note is product_note


def test_stage_batches_replay_notes_and_can_name_the_notes_type(data_dir, examples):
    from judo_model.training.data import PromptOptions, defect_titles
    from judo_model.training.evidence import load_evidence
    from judo_model.training.note_reading import NoteReadingSampler
    from judo_model.training.sft import SFTConfig, supervised_pairs

    evidence = load_evidence(data_dir)
    notes = NoteReadingSampler(defect_titles(examples), seed=1)
    config = SFTConfig(steps=1, note_replay=0.25, type_from_note=True)
    pairs = supervised_pairs(examples, PromptOptions(), evidence, config, questions=False, notes=notes)(400)
    text_only = [p for p, *_ in pairs if not p.images]
    assert 60 <= len(text_only) <= 140, "about a quarter of the batch reads notes without images"
    hinted = [(p, parse_output(t)) for p, t, *_ in pairs if p.images and "Nearest labelled defect: " in str(p.messages)]
    named = [(p, parsed) for p, parsed in hinted if parsed.defect]
    assert named, "some defective images carry a defect hint"
    for prompt, parsed in named:
        assert f"Nearest labelled defect: {parsed.defect_type}." in str(prompt.messages)


@pytest.mark.parametrize("kind", ["listed", "random"])
def test_stage2_can_call_the_product_by_an_invented_name_in_the_note_and_the_options(data_dir, examples, kind):
    """Object Classification read from the note: a renamed product is named in the note and is the
    answer, and the true name is gone from the options; products without training images are
    never offered (they would only ever be wrong answers)."""
    import re

    from judo_model.data.knowledge import CATEGORY_FACTS, product_title
    from judo_model.training.data import PromptOptions, untrained_product_names, with_products_renamed
    from judo_model.training.evidence import load_evidence
    from judo_model.training.sft import SFTConfig, supervised_pairs

    evidence = load_evidence(data_dir)
    known = {facts.display_name for facts in CATEGORY_FACTS.values()}
    options = PromptOptions(product_note=True)

    def object_answers(share: float):
        config = SFTConfig(steps=1, single_question=1.0, seed=4, unseen_product_share=share, invented_names=kind)
        pairs = supervised_pairs(examples, options, evidence, config)(300)
        found = []
        for prompt, target, *_ in pairs:
            text = prompt.messages[0]["content"][-1]["text"]
            if "What kind of product" not in text or "Nearest known product" not in text:
                continue
            named = re.search(r"Nearest known product: ([^.]+)\.", text).group(1)
            listed = re.findall(r"^[A-D]: (.+)$", text, flags=re.MULTILINE)
            found.append((named, listed, parse_output(target).answers[0]))
        return found

    untrained = set(untrained_product_names(examples))
    found = object_answers(1.0)
    renamed = [(named, listed, answer) for named, listed, answer in found if named not in known]
    assert len(renamed) >= 10
    for named, listed, answer in renamed:
        assert answer == named and named in listed
    asking = next(e for e in examples if "Object Classification" in e.question_types)
    true_name = product_title(asking.category)
    moved = with_products_renamed(asking, {true_name: "tin spindle"})
    for before, after, kind in zip(asking.questions, moved.questions, asking.question_types):
        if kind == "Object Classification":
            assert true_name not in after.options.values() and "tin spindle" in after.options.values()
        else:
            assert after == before
    assert moved.answer_letters == asking.answer_letters
    assert not untrained & {name for _, listed, _ in found for name in listed}
    plain = object_answers(0.0)
    assert not [named for named, *_ in plain if named not in known]
    assert untrained & {name for _, listed, _ in plain for name in listed}, "MMAD-style distractors name them"


def test_prompts_asking_a_defect_question_can_learn_their_answers_only(data_dir, examples):
    from judo_model.data.questions import DEFECT_PREFIX
    from judo_model.modeling import load_model
    from judo_model.output import ANSWER_OPEN
    from judo_model.prompting import IGNORE_INDEX
    from judo_model.training.data import PromptOptions
    from judo_model.training.encoding import CachedEncoder
    from judo_model.training.evidence import load_evidence
    from judo_model.training.sft import SFTConfig, supervised_pairs

    evidence = load_evidence(data_dir)
    config = SFTConfig(steps=1, replay=0.3, cue_answers_only=True)
    pairs = supervised_pairs(examples, PromptOptions(), evidence, config)(300)
    asks_defect_question = [DEFECT_PREFIX in str(p.messages) for p, _, _ in pairs]
    cued = [pair for pair, asks in zip(pairs, asks_defect_question) if asks]
    others = [pair for pair, asks in zip(pairs, asks_defect_question) if not asks]
    assert cued and all(start == t.index(ANSWER_OPEN) > 0 for _, t, start in cued)
    assert others and all(start == 0 for _, _, start in others), "verdicts are learned where no defect question is asked"
    assert not any(start for _, _, start in supervised_pairs(examples, PromptOptions(), evidence,
                                                            SFTConfig(steps=1, replay=0.3))(300)), "off by default"

    _, processor = load_model("tiny")
    encoder = CachedEncoder(processor)
    prompt, target, start = cued[0]
    whole = encoder.encode(prompt, target)
    answers_only = encoder.encode(prompt, target, start)
    assert torch.equal(whole["input_ids"], answers_only["input_ids"]), "the same tokens, only fewer are learned"
    learned = answers_only["labels"][0] != IGNORE_INDEX
    assert 0 < int(learned.sum()) < int((whole["labels"][0] != IGNORE_INDEX).sum())
    text = processor.tokenizer.decode(answers_only["input_ids"][0][learned])
    assert text.startswith(ANSWER_OPEN) and "<defect>" not in text


def test_defect_classification_answer_can_name_another_type(examples):
    from judo_model.training.data import target_for

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
    from judo_model.training.data import ground_truth_mask, target_for

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
    from judo_model.mmad.format import DEFECT_QUESTION_TYPES
    from judo_model.training.data import BalancedSampler

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
    from judo_model.modeling import load_model
    from judo_model.training.data import PromptOptions, example_prompt, target_for
    from judo_model.training.encoding import CachedEncoder
    from judo_model.training.evidence import load_evidence

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
    from judo_model.training.data import endorsed_boxes

    truth = [(100, 100, 300, 300), (600, 600, 700, 700)]
    assert endorsed_boxes(truth, (600, 600, 725, 700)) == [(600, 600, 725, 700), (100, 100, 300, 300)]
    assert endorsed_boxes(truth, (0, 0, 50, 50)) == truth, "a prefilter box off the defect is corrected"
    assert endorsed_boxes(truth, None) == truth
    assert endorsed_boxes([], (0, 0, 50, 50)) == []


def test_evidence_inputs(data_dir, examples):
    from judo_model.imaging import load_image
    from judo_model.training.evidence import PANEL, load_evidence, render_evidence

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
    import zlib

    from actors.references import DEFECTS_SUBDIR, REFERENCES_SUBDIR, DefectExemplars
    from judo_model.data.knowledge import defect_title
    from judo_model.training.evidence import BANKS_FOLDER, HINT_DROPOUT, evidence_dir, load_evidence

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
    import zlib

    from actors.references import ProductExemplars
    from judo_model.data.knowledge import product_title
    from judo_model.imaging import load_image
    from judo_model.training.evidence import HINT_DROPOUT, PRODUCTS_FOLDER, evidence_dir, load_evidence

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
    import shutil

    from judo_model.data.knowledge import product_title
    from judo_model.imaging import load_image
    from judo_model.training.answerer import JuxtaposedJudo, mmad_templates
    from judo_model.training.data import PromptOptions
    from judo_model.training.evidence import PRODUCTS_FOLDER, BankEvidence

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
    from judo_model.training.evidence import evidence_note, hottest_boxes, refine_region

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


def test_grpo_rows_carry_the_guide_and_the_chosen_region_truth(data_dir, examples):
    from judo_model.training.data import PromptOptions, defect_titles
    from judo_model.training.evidence import load_evidence
    from judo_model.training.grpo import grpo_rows

    evidence = load_evidence(data_dir)
    by_mask = grpo_rows(examples, PromptOptions(), evidence, 12, seed=2)
    by_boxes = grpo_rows(examples, PromptOptions(), evidence, 12, seed=2, region_truth="boxes",
                         empty_region_reward=0.4)
    assert any(row["mask"] for row in by_mask) and not any(row["mask"] for row in by_boxes)
    assert {row["empty_region_reward"] for row in by_mask} == {1.0}
    assert {row["empty_region_reward"] for row in by_boxes} == {0.4}
    assert [row["gt_boxes"] for row in by_mask] == [row["gt_boxes"] for row in by_boxes]
    known_types = set(defect_titles(examples))
    guides = [json.loads(row["guide"]) for row in by_boxes]
    for row, guide in zip(by_boxes, guides):
        assert guide["answer_options"] == list(json.loads(row["options"]).values())
    assert all(guide["defect_types"] and set(guide["defect_types"]) <= known_types for guide in guides)
    with pytest.raises(ValueError, match="region_truth"):
        grpo_rows(examples, PromptOptions(), evidence, 1, region_truth="pixels")


def test_grpo_options_are_decoded_for_the_reward_functions():
    from judo_model.rewards import answer_accuracy_reward
    from judo_model.training.grpo import json_options

    reward = json_options(answer_accuracy_reward)
    completion = "<think>x</think>\n<defect>no</defect>\n<region>[]</region>\n<answer>No.</answer>"
    assert reward([completion], answer=["B"], options=[json.dumps({"A": "Yes.", "B": "No."})]) == [1.0]


def test_smoke_run_of_every_stage(smoke_checkpoint):
    from judo_model.inference import JudoModel

    out, log = smoke_checkpoint
    assert [s["stage"] for s in log.stages] == ["note", "seg", "sft", "grpo"]
    assert all(len(s["steps"]) == 2 for s in log.stages)
    assert {"reward", "answer_accuracy_reward", "segmentation_iou_reward", "structure_reward"} <= set(
        log.stages[3]["values"])
    assert (out / "stages" / "note" / "model.safetensors").is_file()
    assert (out.parent / "curves.png").stat().st_size > 1000
    assert (out / "stages" / "sft" / "model.safetensors").is_file()
    assert json.loads((out / "judo_training.json").read_text())["recipe"]["evidence_route"] == "heat_crop_text"
    judo = JudoModel.load(out)
    assert judo.model.config.model_type == "qwen2_5_vl"


def test_smoke_checkpoint_answers_through_the_mmad_harness(smoke_checkpoint, data_dir):
    from judo_model.mmad.evaluate import evaluate
    from judo_model.mmad.format import MMADDataset
    from judo_model.training.answerer import load_juxtaposed_answerer

    out, _ = smoke_checkpoint
    answerer = load_juxtaposed_answerer(out, data_dir, max_new_tokens=8)
    result = evaluate(MMADDataset(data_dir, "mmad.json"), answerer, limit=1)
    assert result.answers and all(a["question_type"] for a in result.answers)


def test_eval_mmad_cli_fits_banks_on_the_templates_of_any_mmad_folder(smoke_checkpoint, data_dir, tmp_path,
                                                                        monkeypatch):
    """``judo eval mmad --model CKPT`` on a folder without judo train's evidence cache."""
    import shutil

    from judo_model.mmad.format import MMADDataset
    from pipelines.cli import main

    out, _ = smoke_checkpoint
    plain = tmp_path / "mmad-folder"
    shutil.copytree(data_dir, plain, ignore=shutil.ignore_patterns("evidence"))
    monkeypatch.setenv("JUDO_CACHE", str(tmp_path / "cache"))
    answers = tmp_path / "answers.json"
    assert main(["eval", "mmad", "--data", str(plain), "--model", str(out), "--limit", "2",
                 "--out", str(answers)]) == 0
    first = next(iter(MMADDataset(plain, "mmad.json")))
    banks = list((tmp_path / "cache" / "mmad-banks").glob(f"*/{first.dataset}/{first.category}/bank.json"))
    assert banks, "a bank was fitted on the folder's normal templates"
    products = list((tmp_path / "cache" / "mmad-banks").glob("*/products/descriptors.npy"))
    assert products, "the product library was built on the folder's normal templates"
    rows = json.loads(answers.read_text())
    assert rows and all(r["question_type"] for r in rows)
    grounding = json.loads(answers.with_name(answers.stem + "_grounding.json").read_text())
    assert grounding["images"] >= 1


def test_cli_runs_single_stages(data_dir, smoke_checkpoint, tmp_path):
    from pipelines.cli import main

    base = ["train", "--data", str(data_dir), "--batch-size", "2"]
    assert main([*base, "--stage", "seg", "--seg-steps", "1", "--out", str(tmp_path / "seg")]) == 0
    assert main([*base, "--stage", "sft", "--sft-steps", "1", "--init", str(tmp_path / "seg"),
                 "--evidence-route", "none", "--out", str(tmp_path / "sft")]) == 0
    with pytest.raises(ValueError, match="init"):
        main([*base, "--stage", "grpo", "--out", str(tmp_path / "grpo")])
    free = ["--grpo-steps", "1", "--grpo-generations", "2", "--grpo-prompts-per-step", "1", "--grpo-guided", "no",
            "--grpo-region-truth", "boxes", "--grpo-scale-rewards", "batch"]
    assert main([*base, "--stage", "grpo", *free, "--init", str(smoke_checkpoint[0]),
                 "--out", str(tmp_path / "grpo-free")]) == 0
    product = ["--product-note", "yes", "--note-question-share", "1.0", "--note-plain-steps", "1"]
    assert main([*base, "--stage", "note", "--note-steps", "2", "--note-batch-size", "2", *product,
                 "--out", str(tmp_path / "note")]) == 0
    assert main([*base, "--stage", "seg", "--seg-steps", "1", "--init", str(tmp_path / "note"), *product,
                 "--out", str(tmp_path / "seg-product")]) == 0
    from judo_model.training.pipeline import prompt_options_of, read_training_log

    assert prompt_options_of(tmp_path / "seg-product").product_note
    assert [s["stage"] for s in read_training_log(tmp_path / "seg-product")["stages"]] == ["note", "seg"]


def test_defect_titles_are_the_names_answers_use():
    from judo_model.data.knowledge import category_facts, defect_title

    assert defect_title("fabric", "broken_thread") == category_facts("fabric").defects["broken_thread"].title
    assert defect_title("fabric", "pulled_loop") == "pulled loop", "an unknown label reads as words"
    assert defect_title("a-plant-product", "weld_spatter") == "weld spatter"
