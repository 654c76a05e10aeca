# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench ui lint clean

# torch goes first and pinned: 2.13.0 is a CPU wheel on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/retro-ops demo

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/chunking.py
	$(BIN)/python bench/embedding.py

ui: $(STAMP)
	$(BIN)/retro-ops ui

lint: $(STAMP)
	$(BIN)/ruff check retro_ops assets tests bench

clean:
	rm -rf $(VENV) .retro_ops
