# Two commands do all set-up on a fresh clone:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on local disk (see docs/installation.md).
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test,docs]"
	touch $(STAMP)

venv: $(STAMP)

## The main job: a simulated LabDCT scan written to disk (out/demo).
demo: $(STAMP)
	$(BIN)/labdct-live demo --out out/demo

## The linter, the tests (not the slow ones) with the docstring examples, and the docs build.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q --durations=15 --doctest-modules labdct_live tests
	$(BIN)/mkdocs build --strict --quiet --site-dir .site

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir .site

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .site out
