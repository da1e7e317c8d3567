# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates or updates the local virtual environment .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LORT_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export LORT_DATA

.PHONY: venv test lint docs demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py --check
	$(BIN)/mkdocs build --strict --quiet

test: lint docs
	./scripts/ensure-chromium
	$(BIN)/python -m pytest -q

DEMO_OUT ?= runs/demo

demo: $(STAMP)
	$(BIN)/lort data info --dataset cifar10 --imbalance-ratio 100 --max-per-class 4980 --download
	$(BIN)/lort run configs/demo.yaml --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
