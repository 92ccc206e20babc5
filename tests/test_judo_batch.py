"""Batched JUDO: one ``generate`` for a batch of left-padded prompts answers as each prompt alone does.

On the shipped checkpoint (float32, CPU, greedy): the padded rows' next-token logits match the
prompts' own, and the generated texts and verdicts of a batch equal the one-at-a-time outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.judo_requests import sample_requests
from judo_model.runtime.prompting import JudoPrompt, Question, build_prompt
from pipelines.engines import TransformersEngine, prompt_inputs

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "judo-tiny"
MAX_NEW_TOKENS = 128

pytestmark = pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(),
                                reason="checkpoints/judo-tiny not shipped in this tree")


@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    yield TransformersEngine(CHECKPOINT, max_new_tokens=MAX_NEW_TOKENS, torch_threads=1)
    torch.set_num_threads(threads)  # the engine sets the process's torch threads; later tests get theirs back


def verdict(parsed) -> tuple:
    return parsed.defect, parsed.defect_type, parsed.boxes


def test_a_batch_answers_each_frame_as_one_at_a_time_does(engine):
    requests = sample_requests(6, seed=3)
    prompts = [build_prompt(**prompt_inputs(request, engine.options)) for request in requests]
    lengths = [engine.judo.encode_batch([prompt])["input_ids"].shape[1] for prompt in prompts]
    assert len(set(lengths)) >= 3  # the batch really pads its rows

    batched = engine.infer(requests)
    alone = [engine.judo.generate_from_prompt(prompt, MAX_NEW_TOKENS, request.defect_types)
             for prompt, request in zip(prompts, requests)]

    assert [result.raw_text for result in batched] == [raw for raw, _ in alone]
    assert [verdict(result.parsed) for result in batched] == [verdict(parsed) for _, parsed in alone]
    assert len({result.latency_ms for result in batched}) == 1  # each waited for the one batch call
    guided = [(r, request) for r, request in zip(batched, requests) if request.defect_types and r.parsed.defect]
    assert guided and all(r.parsed.defect_type in request.defect_types for r, request in guided)


def test_padded_rows_see_only_their_own_tokens_and_positions(engine):
    judo = engine.judo
    requests = sample_requests(4, seed=5)
    prompts = [build_prompt(**prompt_inputs(request, engine.options)) for request in requests]
    batch = judo.encode_batch(prompts)
    assert len(set(batch["attention_mask"].sum(dim=1).tolist())) > 1
    assert (batch["attention_mask"][:, -1] == 1).all()  # padded on the left: every row ends at its prompt's end
    tokenizer = judo.processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "right"  # as a stock Qwen tokenizer has it
    try:
        assert torch.equal(judo.encode_batch(prompts)["attention_mask"], batch["attention_mask"])
    finally:
        tokenizer.padding_side = side
    with torch.inference_mode():
        logits = judo.model(**batch).logits[:, -1]
        alone = torch.stack([judo.model(**judo.encode_batch([p])).logits[0, -1] for p in prompts])
        torch.testing.assert_close(logits, alone, atol=1e-4, rtol=1e-4)
        # the check has teeth: without the mask, the padded rows attend to the padding and drift
        unmasked = dict(batch, attention_mask=torch.ones_like(batch["attention_mask"]))
        drift = (judo.model(**unmasked).logits[:, -1] - alone).abs().amax(dim=1)
    padded_rows = batch["attention_mask"].sum(dim=1) < batch["attention_mask"].shape[1]
    assert (drift[padded_rows] > 1e-3).all()


def test_rows_with_their_own_images_guides_and_prefixes(engine):
    """Rows with 3, 1 and 0 images of different sizes, their own answer choices and a prefix."""
    judo = engine.judo
    [first, second] = sample_requests(2, seed=7)
    question = Question("Is there any defect in the object?", {"A": "Yes", "B": "No"})
    prompts = [
        build_prompt(**dict(prompt_inputs(first, engine.options), questions=[question])),
        build_prompt(None, np.asarray(second.query), questions=[Question("What is the product?", None)]),
        JudoPrompt(messages=[{"role": "user", "content": "Prefilter: anomaly score 3.1 x threshold (above), "
                                                         "hottest at [100, 100, 200, 200]."}],
                   images=[], image_roles=()),
    ]
    assert [len(p.images) for p in prompts] == [3, 1, 0] and prompts[1].images[0].size == (224, 224)
    answer_options = [["Yes", "No"], None, None]
    defect_types = [first.defect_types, None, ["hole", "stain"]]
    prefixes = ["", "<think>", ""]
    batched = judo.generate_batch(prompts, MAX_NEW_TOKENS, defect_types, answer_options, prefixes)
    alone = [judo.generate_from_prompt(*row, prefix=prefix)
             for row, prefix in zip(zip(prompts, [MAX_NEW_TOKENS] * 3, defect_types, answer_options), prefixes)]
    assert [raw for raw, _ in batched] == [raw for raw, _ in alone]
    assert batched[1][0].startswith("<think>")
    assert batched[0][1].answers and batched[0][1].answers[0] in ("Yes", "No")


def test_per_row_arguments_must_match_the_batch(engine):
    prompts = [build_prompt(None, np.zeros((112, 112, 3), np.uint8))] * 2
    with pytest.raises(ValueError, match="1 values for 2 prompts"):
        engine.judo.generate_batch(prompts, 8, defect_types=[["hole"]])
    with pytest.raises(ValueError, match="one list of choices"):
        engine.judo.generate_batch(prompts, 8, answer_options=["Yes", "No"])
    assert engine.judo.generate_batch([], 8) == []
