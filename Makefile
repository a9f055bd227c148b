# attnserve: `make serve` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SRC := model service tests loadtests

.PHONY: install serve test lint format loadtest corpus train evaluate deploy-check container-test clean

install: $(STAMP)

# torch==2.13.0 goes in first and alone: any other torch requirement resolved before it
# pulls the CUDA build (gigabytes). The project pins the same version, so pip keeps it.
# PyPI's torch for Linux is the CUDA build: unless pip already finds a CPU wheel (a local
# file, as on the project machines), it comes from TORCH_INDEX (a cu128 index for CUDA).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if $(PY) -m pip install --dry-run --quiet --no-deps --report - torch==2.13.0 2>/dev/null \
			| grep -q 'cpu-cp3'; then \
		$(PY) -m pip install --quiet torch==2.13.0; \
	else \
		$(PY) -m pip install --quiet torch==2.13.0 --index-url $(TORCH_INDEX); \
	fi
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

serve: install
	$(PY) -m service

test: install lint
	$(PY) -m pytest -q || [ $$? -eq 5 ]  # 5: no tests collected
	# the API's tests again, the engines in a process of their own (--engine-process)
	ATTNSERVE_ENGINE_PROCESS=1 $(PY) -m pytest -q tests/test_api.py

lint: install
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(VENV)/bin/mypy model service

format: install
	$(VENV)/bin/ruff check --fix $(SRC)
	$(VENV)/bin/ruff format $(SRC)

# locust against a running server (`make serve` in another terminal): USERS for DURATION, headless.
HOST ?= http://127.0.0.1:8000
USERS ?= 16
DURATION ?= 60s
loadtest: install
	$(VENV)/bin/locust -f loadtests/locustfile.py --host $(HOST) --headless \
		--users $(USERS) --spawn-rate $(USERS) --run-time $(DURATION) --only-summary

# The corpus and the bundled model (run once, never in CI; see model/checkpoints/en-de/MODEL_CARD.md).
corpus: install
	$(PY) -m model.data

train: install
	$(PY) -m model.train

evaluate: install
	$(PY) -m model.evaluate model/checkpoints/en-de --split test

# Static checks of the Dockerfile, k8s manifests, compose file, Prometheus config and alert rules,
# and the Grafana dashboard (offline but for package installs).
deploy-check: install
	bash deploy/check.sh

# Build the Dockerfile here, check the running image, then compose's server + Prometheus and
# every dashboard query (needs root; installs docker.io, mmdebstrap, the compose plugin).
container-test: install
	bash deploy/container-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
