# Every target installs what it needs first, so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# OpenMP busy-waiting made SB3 3–9× slower on 2-core machines.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install quickstart test test-all test-integration lint bench

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/.installed

## quickstart: train on the default config (runs/quickstart/0/), then evaluate the trained agents
## beside the untrained checkpoint and scripted:random on the same seeds
quickstart: install
	if [ -f runs/quickstart/0/config.yaml ]; then \
		$(BIN)/peerpreserve train --resume runs/quickstart/0; \
	else \
		$(BIN)/peerpreserve train configs/quickstart.yaml; \
	fi
	$(BIN)/peerpreserve evaluate runs/quickstart/0 --baselines
	@echo "next: tensorboard --logdir runs/  (Custom Scalars: behaviour), and runs/quickstart/0/eval/*/metrics.json"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## test: lint, then the default test run (pytest's default markers: no slow, no integration tests)
test: lint
	$(BIN)/python -m pytest

test-all: lint
	$(BIN)/python -m pytest -m "not integration"

## test-integration: other MARL libraries, each set in its own virtual environment
test-integration:
	bash .ci/integration.sh

bench: install
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/train_throughput.py
