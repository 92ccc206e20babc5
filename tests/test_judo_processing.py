"""The project tokenizer, the torchvision-free processor and the juxtaposed prompt builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from judo_model.imaging import encode_png
from judo_model.runtime.output import format_target
from judo_model.processing import (
    CONTRACT_TAG_TOKENS,
    QWEN_SPECIAL_TOKENS,
    JudoProcessor,
    build_processor,
    load_processor,
    tokenizer_corpus,
    train_tokenizer,
)
from judo_model.runtime.prompting import (
    IGNORE_INDEX,
    Question,
    build_prompt,
    collate_for_training,
    encode_for_generation,
    encode_for_training,
)


@pytest.fixture(scope="module")
def processor() -> JudoProcessor:
    return build_processor(tokenizer_corpus(extra_text=["A poke on the capsule surface.", "The pill has a crack."]))


def gray(height=112, width=112, value=128):
    return np.full((height, width, 3), value, dtype=np.uint8)


def test_special_tokens_are_atomic_and_first_in_the_vocabulary(processor):
    tokenizer = processor.tokenizer
    assert [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS] == list(range(len(QWEN_SPECIAL_TOKENS)))
    for token in (*QWEN_SPECIAL_TOKENS, *CONTRACT_TAG_TOKENS):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_any_text_round_trips_and_contract_tags_survive_skip_special_tokens(processor):
    tokenizer = processor.tokenizer
    text = "<think>Ölfleck – 油污 🙂</think>\n<region>[[1, 2, 3, 4]]</region>"
    ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_learns_from_the_corpus_it_is_given():
    small = train_tokenizer(["x"], vocab_size=512)
    domain = train_tokenizer(["contamination on the transistor lead"] * 50, vocab_size=512)
    phrase = "contamination on the transistor lead"
    assert len(domain(phrase)["input_ids"]) < len(small(phrase)["input_ids"])


def test_chat_template_is_qwens(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_image_tokens_follow_the_image_grid(processor):
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[gray(150, 200)],
                       return_tensors="pt")
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert (t, h % 2, w % 2) == (1, 0, 0)
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == h * w // 4
    assert inputs["pixel_values"].shape == (h * w, 3 * 2 * 14 * 14)
    assert 112 * 112 <= h * 14 * w * 14 <= 224 * 224


def test_saved_processor_is_a_stock_qwen_folder_and_reloads_identically(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2_5_VLProcessor"
    assert config["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    assert config["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"

    reloaded = load_processor(tmp_path)
    prompt = build_prompt(gray(), gray(value=90), questions=[Question("Any defect?", {"A": "Yes", "B": "No"})])
    before, after = encode_for_generation(processor, prompt), encode_for_generation(reloaded, prompt)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_prompt_names_images_in_fixed_order(tmp_path):
    query_path = tmp_path / "query.png"
    query_path.write_bytes(encode_png(gray(value=200)))
    prompt = build_prompt(
        gray(),
        query_path,
        evidence_image=gray(value=10),
        evidence_note="Prefilter: anomaly score 1.8 x threshold (above), hottest at [0, 0, 25, 25].",
        questions=[Question("Is there any defect?", {"A": "Yes", "B": "No"}), Question("Describe it.")],
        domain_knowledge="Capsules are red and black.",
    )
    assert prompt.image_roles == ("reference", "query", "evidence")
    assert [img.getpixel((0, 0))[0] for img in prompt.images] == [128, 200, 10]
    content = prompt.messages[0]["content"]
    assert [part["type"] for part in content].count("image") == 3
    text = "".join(part.get("text", "<IMG>") for part in content)
    assert text.index("Image 1 is a normal") < text.index("Image 2 is the query") < text.index("Image 3 is the prefilter")
    assert "comparing it with the normal reference (image 1)" in text
    assert (text.index("comparing it") < text.index("Prefilter: anomaly score 1.8") < text.index("Capsules are red")
            < text.index("Question 1: Is there any defect?\nA: Yes\nB: No"))
    assert "Question 2: Describe it." in text and "<answer>" in text


def test_prompt_without_reference_makes_the_query_image_1():
    prompt = build_prompt(None, gray())
    assert prompt.image_roles == ("query",)
    text = "".join(part.get("text", "") for part in prompt.messages[0]["content"])
    assert "Image 1 is the query" in text and "Inspect image 1 for defects." in text


def test_training_labels_cover_only_the_assistant_turn(processor):
    prompt = build_prompt(gray(), gray(value=60))
    target = format_target(reasoning="Darker than the reference.", defect=True, defect_type="stain",
                           boxes=[[0, 0, 1000, 1000]])
    encoded = encode_for_training(processor, prompt, target)
    labels = encoded["labels"][0]
    trained = labels[labels != IGNORE_INDEX]
    assert processor.tokenizer.decode(trained) == target + "<|im_end|>"
    prompt_length = len(encode_for_generation(processor, prompt)["input_ids"][0])
    assert (labels[:prompt_length] == IGNORE_INDEX).all() and (labels[prompt_length:] != IGNORE_INDEX).all()


def test_collate_pads_right_and_concatenates_images(processor):
    examples = [
        encode_for_training(processor, build_prompt(gray(), gray()), format_target(reasoning="Same.", defect=False)),
        encode_for_training(processor, build_prompt(None, gray(224, 224)),
                            format_target(reasoning="A much longer explanation of nothing.", defect=False)),
    ]
    batch = collate_for_training(examples, processor.tokenizer.pad_token_id)
    lengths = [e["input_ids"].shape[1] for e in examples]
    assert batch["input_ids"].shape == (2, max(lengths))
    short = lengths.index(min(lengths))
    assert batch["attention_mask"][short].sum() == min(lengths)
    assert (batch["labels"][short, min(lengths):] == IGNORE_INDEX).all()
    assert batch["image_grid_thw"].shape == (3, 3)
    assert batch["pixel_values"].shape[0] == sum(e["pixel_values"].shape[0] for e in examples)
