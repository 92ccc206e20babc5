"""The contract's closed slots inside vLLM: :class:`ChoiceConstraint`, the transformers engine's own
guided decoding, as a vLLM logits processor, so both engines admit the very same tokens.

Imported by name inside vLLM's engine core (``logits_processors=[SLOTS_PROCESSOR]`` in
:func:`judo_model.runtime.vllm_engine.engine_arguments`), in the engine environment only: the project venv
never imports this module. A request asks for its slots with
``SamplingParams(extra_args={"judo_slots": {"defect_types": [...], "answer_options": [...]}})``.
"""

from __future__ import annotations

from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from judo_model.processing import load_processor
from judo_model.runtime.constraints import ChoiceConstraint


class ChoiceSlots(AdapterLogitsProcessor):
    """One :class:`ChoiceConstraint` per request that names slots (others decode freely)."""

    def __init__(self, vllm_config, device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        self.tokenizer = load_processor(vllm_config.model_config.model).tokenizer

    def is_argmax_invariant(self) -> bool:
        return False  # it removes tokens, so greedy decoding must see it

    def new_req_logits_processor(self, params: SamplingParams):
        slots = (params.extra_args or {}).get("judo_slots")
        constraint = ChoiceConstraint.for_output(self.tokenizer, 0, **slots) if slots else None
        if constraint is None:
            return None
        return lambda output_ids, logits: constraint.constrain_row(output_ids, logits)
