"""Training of the JUDO reasoner: evidence, data, Stage 1 seg, Stage 2 SFT, Stage 3 GRPO, ``judo train``."""
