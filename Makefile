# pixword: `make quickstart` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GLYPHS := data/glyphs

.PHONY: install quickstart test test-fast lint clean

# torch is pinned and installed first: on a CPU-only machine pip takes the CPU build on disk,
# a user with GPUs gets the normal build; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(GLYPHS)/train/index.json: $(STAMP)
	$(BIN)/pixword prep glyphs --out $(GLYPHS)

quickstart: $(STAMP) $(GLYPHS)/train/index.json
	$(BIN)/pixword fit experiments/quickstart.yaml --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not multiproc and not slow"

lint: $(STAMP)
	$(BIN)/ruff check pixword_lit data_prep tests

clean:
	rm -rf runs $(GLYPHS)
