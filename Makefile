# The two set-up commands of the README:
#   make demo   installs and runs the main job
#   make test   installs everything and runs the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install viewer system-deps lint typecheck pytest fuzz bench bench-scale bench-retrospective bench-viewer clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The OHIF viewer the gateway serves at /viewer/: a pinned @ohif/app from the npm registry,
# checked against its published SHA-512 before it is unpacked.
VIEWER := var/ohif/3.13.2/.installed
$(VIEWER): $(STAMP) services/gateway/viewer.py
	$(PY) -m services.gateway install-viewer --dir var/ohif

viewer: $(VIEWER)

system-deps:
	./scripts/install-system-deps.sh

demo: install viewer system-deps
	$(PY) -m tools.demo

lint: install
	$(VENV)/bin/ruff check services tools tests bench
	$(VENV)/bin/ruff format --check services tools tests bench

typecheck: install
	$(VENV)/bin/mypy

pytest: install viewer system-deps
	$(PY) -m pytest

test: install system-deps lint typecheck pytest

fuzz: install system-deps
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} $(PY) -m pytest tests/test_fuzz.py -s -q

bench: install system-deps
	$(PY) bench/ingest.py

bench-scale: install system-deps
	$(PY) bench/scale.py

bench-viewer: install system-deps
	$(PY) bench/viewer.py

bench-retrospective: install system-deps
	$(PY) bench/retrieval.py
	$(PY) bench/registry.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
