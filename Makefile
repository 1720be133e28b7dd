# nsfwd: `make serve` starts the server, `make test` runs the whole suite (ruff, mypy, pytest).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve test lint typecheck pytest clean

install: $(STAMP)

$(STAMP): pyproject.toml tests/interop/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	npm ci --prefix tests/interop --no-audit --no-fund
	touch $(STAMP)

serve: install
	$(BIN)/nsfwd serve

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
