# freshrec developer entry points. Everything is installed into .venv and .cache, once.
#   make demo   install everything, start a local Kafka broker and the job, send demo
#               traffic and print live recommendations (Ctrl-C stops it all)
#   make test   install everything and run the whole test suite (unit, integration, e2e)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-unit lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "freshrec needs Python >= 3.11"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv lays out and byte-compiles PyPI's torch and its CUDA wheels (~6 GB) in ~20 s from its
	@# cache where pip takes ~90 s; pip stays the fallback (for an index only pip is set up for).
	$(BIN)/python -m pip install --quiet 'uv>=0.5,<1' \
	  && $(BIN)/uv pip install --python $(BIN)/python --native-tls --compile-bytecode -e '.[dev]' \
	  || { $(BIN)/python -m pip install --upgrade pip wheel setuptools \
	       && $(BIN)/python -m pip install -e '.[dev]'; }
	@touch $(STAMP)

setup: $(STAMP)
	$(BIN)/freshrec setup
	@sh deploy/prometheus/install.sh

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/freshrec demo

# Four workers on any machine: a job test mostly waits (for its JVM, checkpoints, lists), so
# two workers kept only 0.9 of 2 cores busy; four took the suite from 11.7 to 5.1 minutes here.
test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 4 --dist worksteal

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	-$(BIN)/freshrec kafka down
	rm -rf .freshrec
