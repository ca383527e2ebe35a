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
	$(BIN)/python -m pytest -m "not integration"

## test-integration: other MARL libraries, each set in its own virtual environment
test-integration:
	bash .ci/integration.sh

bench: install
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/train_throughput.py
