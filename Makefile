# nsfwd: `make serve` starts the server, `make test` runs the whole suite (ruff, mypy, pytest),
# `make container-test` builds the container images and tries them (what CI runs after it).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest's workers (pytest-xdist): one per core. The Ray tier runs after the rest, in a pytest
# of its own without workers: two cores cannot host two clusters, and xdist's loadgroup does not
# keep a group on one worker under pytest 9, so a worker of its own is not to be had that way.
WORKERS ?= auto
PYTEST := $(BIN)/pytest
PARALLEL := $(PYTEST) -n $(WORKERS)
BEYOND_THE_INNER_LOOP := ray or heavy or browser or campaign or container

.PHONY: install serve test test-fast test-long lint typecheck pytest container-test clean

install: $(STAMP)

$(STAMP): pyproject.toml tests/interop/package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	npm ci --prefix tests/interop --no-audit --no-fund
	touch $(STAMP)

serve: install
	$(BIN)/nsfwd serve

lint: install
	$(BIN)/ruff check src tests container
	$(BIN)/ruff format --check src tests container

typecheck: install
	$(BIN)/mypy

pytest: install
	$(PARALLEL) -m "not (ray or container)"
	$(PYTEST) -m "ray and not container"

# The whole suite: what CI runs.
test: lint typecheck pytest

# The inner loop: lint, types and every test outside the tiers (ray, heavy, browser, campaign).
test-fast: lint typecheck
	$(PARALLEL) -m "not ($(BEYOND_THE_INNER_LOOP))"

# The whole suite with the campaign's long settings: a 60 s load run, more examples.
test-long: lint typecheck
	NSFWD_CAMPAIGN_LOAD_S=60 NSFWD_CAMPAIGN_EXAMPLES=1000 $(PARALLEL) -m "not (ray or container)"
	NSFWD_CAMPAIGN_LOAD_S=60 NSFWD_CAMPAIGN_EXAMPLES=1000 $(PYTEST) -m "ray and not container"

# The container images (Containerfile), built with podman on a local Debian base and tried
# through their published ports: tests/test_container.py, the container tier (container/ci.sh).
container-test: install
	bash container/ci.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
