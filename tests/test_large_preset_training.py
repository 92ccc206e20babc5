"""JUDO at 3B/7B, at a small width: ``judo train --preset qwen2.5-vl-7b --base DIR --ray-workers 2``.

The base folder is a randomly initialised Qwen2.5-VL with the 7B's architecture features (windowed vision
attention with full-attention blocks, spatial merge 2, patch 14, ``tokens_per_second``, GQA, M-RoPE sections,
untied embeddings, RMSNorm eps, Qwen's special tokens and chat template, bf16 weights and Qwen's sampling
generation config) at a few layers and a small width, saved with the project's processor. Stage 2 (SFT)
trains LoRA adapters on it as a Ray Train job of 2 CPU workers (DDP over gloo) for 4 steps; the same run
(name and storage) started again for 6 steps resumes from its Ray Train checkpoint at step 4 and trains
the last 2. Stage 3 (GRPO on TRL, fresh LoRA adapters) then runs 2 steps on the merged folder in one process.
The merged checkpoint then reloads in transformers,
answers frames through the pipeline's transformers engine, and loads and generates in vLLM's CPU build
(the engine environment, skipped with the reason when it is missing, as in ``tests/test_vllm_engine.py``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from benchmarks.judo_requests import sample_requests
from benchmarks.vllm_parity import transformers_texts, vllm_texts
from judo_model.modeling import judo_generation_config, save_checkpoint
from judo_model.presets import LARGE_MAX_PIXELS, LARGE_MIN_PIXELS, get_preset
from judo_model.processing import QWEN_SPECIAL_TOKENS, build_processor, load_processor, tokenizer_corpus
from judo_model.runtime.inputs import read_training_log
from judo_model.runtime.output import ParsedOutput
from judo_model.runtime.vllm_env import VLLM_PYTHON, vllm_unavailable
from judo_model.training.data import tokenizer_corpus_texts
from pipelines.cli import main
from pipelines.engines import TransformersEngine
from tests.training_support import data_dir  # noqa: F401 (session fixture: synthetic data with evidence)

PRESET = "qwen2.5-vl-7b"
#: Qwen2.5-VL-7B-Instruct's config.json, the features kept (widths and depths scaled down): vision
#: depth 32 / full attention in blocks 7, 15, 23, 31 (the last of every 8) -> 4 / 1, 3 (the last of every 2);
#: 28 query / 4 KV heads of dim 128 -> 7 / 1 of dim 32; mrope_section 16/24/24 (sum head_dim / 2) -> 4/6/6.
VISION = {"depth": 4, "hidden_size": 128, "intermediate_size": 342, "num_heads": 4, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1, 3],
          "tokens_per_second": 2, "hidden_act": "silu", "in_channels": 3}
TEXT = {"hidden_size": 224, "intermediate_size": 1184, "num_hidden_layers": 3, "num_attention_heads": 7,
        "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "hidden_act": "silu", "max_position_embeddings": 8192,
        "use_sliding_window": False, "attention_dropout": 0.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}}
#: Qwen2.5-VL-7B-Instruct's generation_config.json samples; a JUDO checkpoint decodes greedily.
QWEN_SAMPLING = {"do_sample": True, "temperature": 0.1, "top_p": 0.001, "top_k": 1, "repetition_penalty": 1.05}
STEPS, RESUMED_STEPS = 4, 6
REQUESTS, MAX_NEW_TOKENS = 3, 24
GRPO_STEPS = 2


def seven_b_like_config(tokenizer) -> Qwen2_5_VLConfig:
    """The 7B's architecture at a small width, with ``tokenizer``'s vocabulary and special-token ids."""
    token_id = tokenizer.convert_tokens_to_ids
    text = {**TEXT, "vocab_size": len(tokenizer), "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"), "pad_token_id": token_id("<|endoftext|>")}
    return Qwen2_5_VLConfig(text_config=text, vision_config={**VISION, "out_hidden_size": TEXT["hidden_size"]},
                            image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
                            vision_start_token_id=token_id("<|vision_start|>"),
                            vision_end_token_id=token_id("<|vision_end|>"), tie_word_embeddings=False)


@pytest.fixture(scope="module")
def base_folder(data_dir, tmp_path_factory):  # noqa: F811
    """A Qwen2.5-VL-7B-shaped folder, randomly initialised, in bf16 as Qwen ships its weights."""
    knowledge = data_dir / "domain_knowledge.json"
    processor = build_processor(tokenizer_corpus(knowledge if knowledge.is_file() else None,
                                                 tokenizer_corpus_texts(data_dir)))
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(seven_b_like_config(processor.tokenizer)).to(torch.bfloat16)
    model.generation_config = judo_generation_config(processor)
    for key, value in QWEN_SAMPLING.items():
        setattr(model.generation_config, key, value)
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("qwen2.5-vl-7b-small"))


@pytest.fixture(scope="module")
def trained(base_folder, data_dir, tmp_path_factory):  # noqa: F811
    """SFT with LoRA on Ray Train (2 CPU workers): 4 steps, then the same run resumed to 6."""
    root = tmp_path_factory.mktemp("large-sft")
    storage = root / "ray"

    def judo_train(steps: int, out: Path) -> int:
        return main(["train", "--preset", PRESET, "--base", str(base_folder), "--stage", "sft", "--data",
                     str(data_dir), "--out", str(out), "--sft-steps", str(steps), "--sft-batch-size", "2",
                     "--ray-workers", "2", "--ray-storage", str(storage), "--ray-run-name", "sft",
                     "--ray-checkpoint-every", "2"])

    assert judo_train(STEPS, root / "first") == 0
    first_checkpoints = sorted(p.name for p in (storage / "sft").glob("sft-*"))
    assert judo_train(RESUMED_STEPS, root / "resumed") == 0
    return root / "first", root / "resumed", first_checkpoints, storage


def test_sft_on_ray_train_checkpoints_and_resumes(trained):
    first, resumed, first_checkpoints, storage = trained
    # two kept (CheckpointConfig num_to_keep=2): the last periodic one and the final one with the merged model
    assert first_checkpoints == ["sft-final000004", "sft-step000004"]
    run1, run2 = (read_training_log(folder)["stages"][-1] for folder in (first, resumed))
    assert run1["stage"] == run2["stage"] == "sft"
    assert run1["steps"] == list(range(STEPS)) and run2["steps"] == list(range(RESUMED_STEPS))
    # the resumed run restored the first 4 steps from the checkpoint instead of training them again
    assert run2["values"]["loss"][:STEPS] == run1["values"]["loss"]
    assert all(value > 0 for value in run2["values"]["loss"])
    assert sorted(p.name for p in (storage / "sft").glob("sft-*")) == ["sft-final000006", "sft-step000006"]
    jobs = [read_training_log(folder)["distributed"] for folder in (first, resumed)]
    assert [(job["workers"], job["backend"], job["device"]) for job in jobs] == [(2, "gloo", "cpu")] * 2
    assert [job["resumed_at_step"] for job in jobs] == [0, STEPS]
    assert all(job["weights_identical_across_workers"] for job in jobs)  # DDP averaged the gradients


def test_merged_checkpoint_is_a_plain_qwen2_5_vl_folder_of_the_7b_architecture(trained, base_folder):
    _, resumed, _, _ = trained
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "processor_config.json", "judo_training.json"} <= {p.name for p in resumed.iterdir()}
    with safe_open(resumed / "model.safetensors", "pt") as tensors:
        assert not any("lora" in key for key in tensors.keys())
    config = json.loads((resumed / "config.json").read_text())
    vision, text = config["vision_config"], config["text_config"]
    assert config["model_type"] == "qwen2_5_vl" and config["tie_word_embeddings"] is False
    assert (vision["fullatt_block_indexes"], vision["window_size"], vision["spatial_merge_size"],
            vision["patch_size"], vision["tokens_per_second"]) == ([1, 3], 112, 2, 14, 2)
    assert text["num_key_value_heads"] < text["num_attention_heads"]
    assert text["rope_parameters"]["mrope_section"] == [4, 6, 6] and text["rms_norm_eps"] == 1e-6
    generation = json.loads((resumed / "generation_config.json").read_text())
    assert generation.get("do_sample", False) is False and "repetition_penalty" not in generation
    processor = load_processor(resumed)
    assert set(QWEN_SPECIAL_TOKENS) <= set(processor.tokenizer.get_vocab())
    assert dict(processor.image_processor.size) == {"shortest_edge": LARGE_MIN_PIXELS, "longest_edge": LARGE_MAX_PIXELS}
    log = read_training_log(resumed)
    spec = get_preset(PRESET)
    assert log["model"]["preset"] == PRESET and log["model"]["base"] == str(base_folder.resolve())
    assert log["model"]["lora"] == {"rank": spec.lora_rank, "alpha": spec.lora_alpha, "dropout": spec.lora_dropout}
    assert log["model"]["dtype"] == "torch.float32"  # no CUDA here: bf16 only on GPUs

    base, merged = load_file(base_folder / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert base.keys() == merged.keys()
    changed = {key for key in base if not torch.equal(base[key].float(), merged[key])}
    # saved in Qwen's own key layout: the language model's decoder layers are ``model.layers.N``
    adapted = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")
    assert changed and all(adapted.fullmatch(key) for key in changed), sorted(changed)[:5]
    assert len({key.split(".")[-2] for key in changed}) == 7, "every adapted projection was merged"
    assert not any(key.startswith("visual.") for key in changed), "LoRA never touches the vision tower"


def test_grpo_trains_fresh_lora_adapters_on_the_merged_checkpoint(trained, data_dir, tmp_path):  # noqa: F811
    """Stage 3 for the 7B preset: TRL's GRPOTrainer on fresh LoRA adapters (the reference log-probabilities from
    the adapters' starting copy, no second model), the three rewards logged, the result merged."""
    _, resumed, _, _ = trained
    out = tmp_path / "grpo"
    assert main(["train", "--preset", PRESET, "--init", str(resumed), "--stage", "grpo", "--data", str(data_dir),
                 "--out", str(out), "--grpo-steps", str(GRPO_STEPS), "--grpo-generations", "2",
                 "--grpo-prompts-per-step", "1"]) == 0
    stage = read_training_log(out)["stages"][-1]
    assert stage["stage"] == "grpo" and len(stage["steps"]) == GRPO_STEPS
    assert {"reward", "kl"} <= set(stage["values"]) and len(stage["values"]) >= 5  # the three rewards too
    before, after = load_file(resumed / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    adapted = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")
    assert changed and all(adapted.fullmatch(key) for key in changed), sorted(changed)[:5]


def test_merged_checkpoint_answers_frames_through_the_transformers_engine(trained):
    _, resumed, _, _ = trained
    engine = TransformersEngine(resumed, max_new_tokens=MAX_NEW_TOKENS)
    assert type(engine.judo.model) is Qwen2_5_VLForConditionalGeneration
    assert engine.judo.model.config.vision_config.fullatt_block_indexes == [1, 3]
    assert engine.options.evidence_route == "heat_crop_text" and engine.options.reference  # the recipe's prompt
    results = engine.infer(sample_requests(REQUESTS, seed=1))
    assert len(results) == REQUESTS
    assert all(isinstance(r.raw_text, str) and isinstance(r.parsed, ParsedOutput) for r in results)
    assert {r.model_version for r in results} == {engine.model_version} and engine.model_version.startswith("resumed@")


def test_merged_checkpoint_loads_and_generates_in_vllm(trained):
    why_not = vllm_unavailable()
    if why_not is not None:
        if os.environ.get("JUDO_REQUIRE_VLLM") == "1":
            pytest.fail(f"JUDO_REQUIRE_VLLM=1 but the vLLM engine environment is missing: {why_not}")
        pytest.skip(f"vLLM engine environment: {why_not}")
    _, resumed, _, _ = trained
    requests = sample_requests(REQUESTS, seed=1)
    texts = vllm_texts(requests, resumed, MAX_NEW_TOKENS, python=VLLM_PYTHON)
    # the merged weights, not the base's: greedy, float32, the transformers engine's very texts
    assert texts == transformers_texts(requests, resumed, MAX_NEW_TOKENS)


def test_what_each_preset_starts_from_is_checked_before_any_work(tmp_path):
    base = ["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--base DIR"):
        main([*base, "--preset", PRESET, "--stage", "sft"])
    with pytest.raises(ValueError, match="--base is for the 3B/7B presets"):
        main([*base, "--preset", "tiny", "--base", str(tmp_path)])
    with pytest.raises(ValueError, match="one supervised stage"):
        main([*base, "--preset", PRESET, "--base", str(tmp_path), "--stage", "grpo", "--ray-workers", "2"])
    with pytest.raises(ValueError, match="same tokenizer"):
        main([*base, "--preset", "tiny", "--stage", "sft", "--ray-workers", "2"])
    with pytest.raises(ValueError, match="global batch"):
        main([*base, "--preset", PRESET, "--base", str(tmp_path), "--stage", "sft", "--sft-batch-size", "1",
              "--ray-workers", "2"])
