# pixword: `make quickstart` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GLYPHS := data/glyphs

.PHONY: install quickstart test test-fast lint prose mutation clean

# uv installs everything: it downloads, unzips and byte-compiles on every core, where pip works on
# one (on the project's 2-core machine: ~40 s instead of ~90 s, the same versions). The venv is
# made without pip (making it with pip took ~5 s) and uv put in it by $(PYTHON)'s pip; if uv cannot
# be had or fails, the venv gets pip and pip makes the same installs. torch is pinned: on a
# CPU-only machine the installer takes the CPU build on disk, a user with GPUs gets the normal
# build; an unpinned torch would pull a multi-GB CUDA build. uv does not read pip's
# configuration, so pip's find-links (where a machine keeps that wheel) are handed to it.
# transformers (tests/test_reference.py only) goes beside the venv, not in it (pyproject.toml:
# the `reference` extra says why); its other requirements are the project's own. It is not
# byte-compiled: the test imports a few of its ~3000 modules (compiling them all took ~12 CPU-s
# of the install; compiling those few when imported, well under 1 s).
UV          := $(BIN)/uv pip install -q --python $(BIN)/python
PIP         := $(BIN)/python -m pip install -q
WITH_PIP    := $(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip >/dev/null
FIND_LINKS   = $$($(PYTHON) -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" \
                 | tr ' ' '\n' | sort -u | paste -sd, -)
REFERENCE   := --no-deps --target $(VENV)/reference 'transformers>=5' regex
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --without-pip $(VENV)
	test -x $(BIN)/uv || $(PYTHON) -m pip --python $(BIN)/python install -q uv || true
	UV_FIND_LINKS="$(FIND_LINKS)" $(UV) --compile-bytecode torch==2.13.0 -e '.[dev]' \
	  || { $(WITH_PIP); $(PIP) torch==2.13.0 && $(PIP) -e '.[dev]'; }
	$(UV) $(REFERENCE) || { $(WITH_PIP); $(PIP) --upgrade --no-compile $(REFERENCE); }
	touch $(STAMP)

install: $(STAMP)

$(GLYPHS)/train/index.json: $(STAMP)
	$(BIN)/pixword prep glyphs --out $(GLYPHS)

quickstart: $(STAMP) $(GLYPHS)/train/index.json
	$(BIN)/pixword fit experiments/quickstart.yaml --overwrite

# The suite runs on WORKERS pytest-xdist processes, a test file per worker at a time, longest
# files first, each worker with its share of the cores as torch threads; the shards and the
# resume matrix's runs are made once for all of them (tests/conftest.py). WORKERS=0 runs it in
# this process, in file order.
WORKERS ?= 2
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not multiproc and not slow"

lint: $(STAMP)
	$(BIN)/ruff check pixword_lit data_prep tests

# The figures quoted in the READMEs are marked spans checked against results/ by make test
# (tests/test_prose_numbers.py); after new results, this rewrites them from the tables.
prose: $(STAMP)
	$(BIN)/python tests/prose_numbers.py --write

# Mutation testing (mutmut 3, a dev dependency) of the modules where a silent error corrupts
# results: data/elements.py, model/tokens.py, model/components/folding.py and model.loss_terms,
# each mutant run against the fast tests listed in pyproject.toml [tool.mutmut]. Prints the
# share of mutants detected per module and fails when a module is below the threshold,
# THRESHOLD in tests/mutation_score.py (0.88: the score and its commit are in README.md and
# results/mutation.csv). About 35 minutes on 2 busy cores with JOBS=1; JOBS=N runs N mutants at
# once. Survivors: mutmut results, mutmut show NAME (or mutmut browse). `mutmut run` exits
# non-zero whenever one mutant survives, so its status is ignored (-): the score decides.
JOBS ?= 2
mutation: $(STAMP)
	rm -rf mutants
	-$(BIN)/mutmut run --max-children $(JOBS) "pixword_lit.data.elements.*" "pixword_lit.model.tokens.*" \
	  "pixword_lit.model.components.folding.*" "pixword_lit.model.pixword.x_loss_terms*"
	$(BIN)/mutmut results --all true | $(BIN)/python tests/mutation_score.py

clean:
	rm -rf runs $(GLYPHS) mutants
