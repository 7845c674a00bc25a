# Two entry points: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench peers clean

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

DEV_NODES ?= 3

run: $(STAMP)
	$(BIN)/dynctl dev up --nodes $(DEV_NODES)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python tests/bench/foundation.py

# dynd (3 nodes) beside etcd (3 members, when installed) and the echo ceiling.
PEERS_ROUNDS ?= 2
PEERS_SECONDS ?= 8
peers: $(STAMP)
	$(BIN)/python tests/bench/peers.py --rounds $(PEERS_ROUNDS) --seconds $(PEERS_SECONDS)

clean:
	rm -rf $(VENV) build *.egg-info
