# The two commands of the README:
#   make book   build the HTML book into _build/full/_build/html, every page re-read and every chapter executed
#               afresh (--all; trained models are reused from the checkpoint cache, see dgmlab.train.load_or_train)
#   make test   lint and run the whole test suite (the book is built in fast mode inside it)
# Both create or reuse the virtual environment .venv and install requirements.txt into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book test venv clean bench

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter-book build . --all --path-output _build/full -W --keep-going
	@echo "Book: $(abspath _build/full/_build/html/index.html)"

test: $(STAMP)
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_vae_epoch.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_grading.py

clean:
	rm -rf _build runs .pytest_cache
