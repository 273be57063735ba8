# The two front-door commands: `make demo` and `make test`. Each installs what it needs into
# .venv/ on first use and reuses it afterwards (the stamp file tracks the requirement files).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean-results

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qbench data synth --out data/synth --seed 1 --images 48 --size 256
	$(BIN)/qbench run jobs/examples/quickstart.yaml

test: $(STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium could not be installed: the HTML screenshot test will be skipped"
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra -n auto --maxprocesses 4 --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/bench_frcnn.py

clean-results:
	rm -rf results/latency results/models results/layers results/reports results/jobs
