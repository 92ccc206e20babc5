"""The real tiny Qwen2.5-VL: presets, LoRA, offline save/load, a smoke SFT and inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration

from judo_model.imaging import encode_png
from judo_model.mmad.answerers import GroundedAnswer, MMADQuery
from judo_model.mmad.judo_answerer import load_mmad_answerer, verdict_prefix
from judo_model.modeling import apply_lora, count_parameters, load_model, save_checkpoint
from judo_model.presets import get_preset
from judo_model.processing import JudoProcessor
from judo_model.runtime.inference import JudoModel, answer_prefix
from judo_model.runtime.output import ParsedOutput, format_target, parse_output
from judo_model.runtime.prompting import (Question, build_prompt, collate_for_training, encode_for_generation,
                                          encode_for_training)

DEFECT_QUESTION = Question("Is there any defect in the object?", {"A": "Yes", "B": "No"})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two busy cores: one intra-op thread is several times faster than two fighting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", seed=0)


def reference_image() -> np.ndarray:
    return np.full((112, 112, 3), 128, dtype=np.uint8)


def defective_image() -> np.ndarray:
    image = reference_image()
    image[:, 56:] = 255
    return image


DEFECT_TARGET = format_target(
    reasoning="The right half is bright.", defect=True, defect_type="stain", boxes=[[500, 0, 1000, 1000]],
    answers=["Yes"],
)


def train(model, processor, samples, steps: int, lr: float = 3e-3) -> list[float]:
    """Plain AdamW steps on one padded batch of (reference, query, target) samples."""
    batch = collate_for_training(
        [encode_for_training(processor, build_prompt(r, q, questions=[DEFECT_QUESTION]), t) for r, q, t in samples],
        processor.tokenizer.pad_token_id,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def logits_for(model, processor) -> torch.Tensor:
    inputs = encode_for_generation(processor, build_prompt(reference_image(), defective_image()))
    with torch.inference_mode():
        return model(**inputs).logits


def test_tiny_preset_is_a_small_but_complete_qwen2_5_vl(tiny):
    model, processor = tiny
    assert 1_000_000 < count_parameters(model) < 10_000_000
    config = model.config
    vision = config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size) == (14, 2)
    assert vision.window_size // vision.spatial_merge_size // vision.patch_size >= 1
    assert all(0 <= i < vision.depth for i in vision.fullatt_block_indexes)
    text = config.text_config
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    assert text.vocab_size == len(processor.tokenizer)
    assert config.image_token_id == processor.image_token_id
    assert model.generation_config.eos_token_id == [
        processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    ]


def test_large_presets_read_local_weights_only():
    with pytest.raises(ValueError, match="local Qwen2.5-VL checkpoint"):
        load_model("qwen2.5-vl-7b")
    with pytest.raises(OSError):
        load_model("qwen2.5-vl-3b", path="/nonexistent/Qwen2.5-VL-3B-Instruct")
    with pytest.raises(ValueError, match="unknown preset"):
        load_model("qwen3")


def test_lora_adapts_only_the_language_model(tiny):
    model, processor = load_model("tiny", seed=1)
    adapted = apply_lora(model, get_preset("tiny"))
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("language_model.layers" in name and "lora_" in name for name in trainable)
    projections = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_checkpoint_reloads_with_stock_transformers_and_identical_logits(tiny, tmp_path):
    model, processor = tiny
    expected = logits_for(model, processor)
    save_checkpoint(model, processor, tmp_path)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "processor_config.json", "chat_template.jinja"} <= {p.name for p in tmp_path.iterdir()}

    stock_processor = JudoProcessor.from_pretrained(str(tmp_path), local_files_only=True)
    for model_class in (Qwen2_5_VLForConditionalGeneration, AutoModelForImageTextToText):
        reloaded = model_class.from_pretrained(str(tmp_path), local_files_only=True).eval()
        assert type(reloaded) is Qwen2_5_VLForConditionalGeneration
        assert torch.equal(logits_for(reloaded, stock_processor), expected)


def test_lora_checkpoint_is_merged_into_a_plain_folder(tmp_path):
    model, processor = load_model("tiny", seed=2, lora=True)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)  # a trained adapter is not the identity
    expected = logits_for(model, processor)
    save_checkpoint(model, processor, tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as tensors:
        assert not any("lora" in key for key in tensors.keys())
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path), local_files_only=True).eval()
    assert torch.allclose(logits_for(reloaded, processor), expected, atol=1e-4)


def test_two_step_smoke_sft_then_save_reload_generate_parse(tmp_path):
    model, processor = load_model("tiny", seed=3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    samples = [
        (reference_image(), defective_image(), DEFECT_TARGET),
        (reference_image(), reference_image(), format_target(reasoning="Same.", defect=False, answers=["No"])),
    ]
    losses = train(model, processor, samples, steps=2)
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("model.visual.") for name in changed), "no gradient reached the vision tower"
    assert any(name.startswith("model.language_model.") for name in changed)

    save_checkpoint(model, processor, tmp_path)
    judo = JudoModel.load(tmp_path)
    assert torch.equal(logits_for(judo.model, judo.processor), logits_for(model, processor))
    raw, parsed = judo.generate(reference_image(), defective_image(), questions=[DEFECT_QUESTION], max_new_tokens=8)
    assert isinstance(raw, str) and isinstance(parsed, ParsedOutput)


@pytest.fixture(scope="module")
def memorized_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained until it writes one defect target verbatim (about 6 s)."""
    model, processor = load_model("tiny", seed=0)
    losses = train(model, processor, [(reference_image(), defective_image(), DEFECT_TARGET)], steps=50)
    assert losses[-1] < 0.05, losses[-5:]
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("memorized"))


def test_large_preset_loads_any_local_qwen2_5_vl_folder_with_lora(memorized_checkpoint):
    model, processor = load_model("qwen2.5-vl-3b", path=memorized_checkpoint, lora=True)
    assert isinstance(model, PeftModel) and not model.training
    assert dict(processor.image_processor.size) == {"shortest_edge": 224 * 224, "longest_edge": 448 * 448}
    inputs = encode_for_generation(processor, build_prompt(reference_image(), defective_image()))
    assert inputs["image_grid_thw"][0].tolist() == [1, 16, 16]  # 112 px upscaled to the 224 px floor


def test_generate_reproduces_the_trained_target(memorized_checkpoint):
    judo = JudoModel.load(memorized_checkpoint)
    raw, parsed = judo.generate(reference_image(), defective_image(), questions=[DEFECT_QUESTION], max_new_tokens=80)
    assert raw == DEFECT_TARGET
    assert parsed.ok and parsed.answers == ("Yes",) and parsed.boxes == ((500, 0, 1000, 1000),)


def test_score_options_prefers_the_trained_answer(memorized_checkpoint):
    judo = JudoModel.load(memorized_checkpoint)
    prefix = DEFECT_TARGET[: DEFECT_TARGET.index("<answer>") + len("<answer>")]
    scores = judo.score_options(reference_image(), defective_image(), DEFECT_QUESTION, reasoning_prefix=prefix)
    assert scores.keys() == {"A", "B"} and all(s <= 0 for s in scores.values())
    assert scores["A"] > scores["B"] + 1.0
    assert answer_prefix("<think>x</think><region>[]</region> trailing") == "<think>x</think><region>[]</region>\n<answer>"


def test_generation_continues_after_a_given_verdict(memorized_checkpoint):
    """``prefix`` is taken as written by the model: the answer comes after it (the answerer's
    verdict-first mode), and ``verdict_prefix`` cuts a reply after its region."""
    judo = JudoModel.load(memorized_checkpoint)
    prefix = verdict_prefix(DEFECT_TARGET)
    assert prefix.endswith("</region>") and "<answer>" not in prefix
    raw, parsed = judo.generate(reference_image(), defective_image(), questions=[DEFECT_QUESTION], prefix=prefix,
                                answer_options=list(DEFECT_QUESTION.options.values()))
    assert raw.startswith(prefix) and parsed.ok
    assert parsed.answers == parse_output(DEFECT_TARGET).answers and parsed.boxes == parse_output(DEFECT_TARGET).boxes
    assert verdict_prefix("<think>x</think> trailing ") == "<think>x</think> trailing"


@pytest.mark.parametrize("mode", ["generate", "guided", "likelihood"])
def test_mmad_answerer_ends_with_the_letter_and_carries_boxes(memorized_checkpoint, tmp_path, mode):
    query_path, reference_path = tmp_path / "query.png", tmp_path / "good.png"
    query_path.write_bytes(encode_png(defective_image()))
    reference_path.write_bytes(encode_png(reference_image()))
    query = MMADQuery(
        image_key="Synthetic/plate/test/stain/000.png", image_path=query_path, question=DEFECT_QUESTION.text,
        options=dict(DEFECT_QUESTION.options), question_type="Anomaly Detection", reference_paths=[reference_path],
    )
    answerer = load_mmad_answerer(memorized_checkpoint, mode=mode)
    reply = answerer.answer(query)
    assert isinstance(reply, GroundedAnswer) and answerer.name.endswith(mode)
    assert reply.text == "Yes\nAnswer: A"
    assert reply.boxes == [(0.5, 0.0, 1.0, 1.0)]
