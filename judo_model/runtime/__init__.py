"""The JUDO model at inference: what serving imports, and what training builds on.

Prompt inputs (:mod:`.inputs`), the prefilter's evidence as shown to the model and the region
refined by it (:mod:`.evidence`), the prompt (:mod:`.prompting`), the output contract
(:mod:`.output`), guided decoding (:mod:`.constraints`) and the loaded checkpoint
(:mod:`.inference`). Nothing here imports :mod:`judo_model.training`. Import from the
submodules: this file re-exports nothing, so reading the output contract does not load torch.
"""
