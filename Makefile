# Two entry points: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

DEV_DIR ?= .dev/node1
DEV_ADDR ?= 127.0.0.1:7400

run: $(STAMP)
	@echo "Starting one dynd node on $(DEV_ADDR) (data in $(DEV_DIR)); Ctrl-C stops it."
	@echo "In another terminal:"
	@echo "  . $(VENV)/bin/activate"
	@echo "  dynctl put greeting 'hello, dynamo'"
	@echo "  dynctl get greeting"
	@echo "  dynctl bench --workload put --concurrency 32 --value-size 1024 --seconds 10"
	@mkdir -p $(DEV_DIR)
	@exec $(BIN)/dynd --name dev1 --listen $(DEV_ADDR) --data-dir $(DEV_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python tests/bench/foundation.py

clean:
	rm -rf $(VENV) build *.egg-info
