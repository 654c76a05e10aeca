# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test check bench ui lint docs reference screenshots clean

# torch goes first and pinned: 2.13.0 is a CPU wheel on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/retro-ops demo

# Two pytest-xdist workers, each taking whole modules, the longest first (tests/conftest.py);
# `make test WORKERS=auto` takes one per core.
WORKERS ?= 2
XDIST   := -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/pytest $(XDIST)

# The edit loop: the suite less the tests marked `heavy` (a daemon, a UI or server process, a
# browser, the demo or the tutorial; tests/conftest.py HEAVY): 86 s on 2 cores (AVX2-only EPYC, quiet).
check: $(STAMP)
	$(BIN)/pytest $(XDIST) -m 'not slow and not bench and not heavy'

bench: $(STAMP)
	$(BIN)/python bench/chunking.py
	$(BIN)/python bench/embedding.py

ui: $(STAMP)
	$(BIN)/retro-ops ui

# The documentation site (mkdocs.yml): strict, so a broken link or anchor fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --clean --site-dir site

# Regenerate docs/reference/ from the code (tests/test_docs.py fails when it is out of date).
reference: $(STAMP)
	$(BIN)/python -m retro_ops.cli.reference docs/reference

# Retake the tutorial's Dagster UI screenshots (docs/images/ui/) with the browser test.
screenshots: $(STAMP)
	RETRO_OPS_DOCS_SCREENSHOTS=docs/images/ui $(BIN)/pytest tests/test_browser.py -q

lint: $(STAMP)
	$(BIN)/ruff check retro_ops assets tests bench

clean:
	rm -rf $(VENV) .retro_ops site
