# tune_app — `make help` lists the targets.
PY ?= .venv/bin/python
STUDY ?= experiments/redsm5_study
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install tune resume evaluate cleanup test test-slow test-all lint format lock

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}' \
		| sed -e 's|$$(HOST)|$(HOST)|g' -e 's|$$(PORT)|$(PORT)|g'

install: ## Create .venv/ from poetry.lock (CPU torch here; see README for CUDA)
	bash scripts/install.sh

tune: ## Run a study on the embedded default (extra Hydra overrides: ARGS="tune.num_samples=8")
	$(PY) -m tune_app.run $(ARGS)

resume: ## Resume an interrupted study (STUDY=experiments/<name>)
	$(PY) -m tune_app.run resume=$(STUDY)

evaluate: ## Evaluate the best trial of a study on the test split (STUDY=...)
	$(PY) -m tune_app.evaluate --study $(STUDY) $(ARGS)

cleanup: ## List reclaimable checkpoint bytes of a study (dry run; ARGS=--execute deletes)
	$(PY) -m tune_app.cleanup --study $(STUDY) $(ARGS)

test: ## The default test suite (fast: unit + short integration tests)
	$(PY) -m pytest -q -m "not slow"

test-slow: ## The slow tests (kill/resume fault tests, longer studies); CI runs these too
	$(PY) -m pytest -q -m slow --durations=0

test-all: ## Every test
	$(PY) -m pytest -q

lint: ## ruff + mypy
	$(PY) -m ruff check tune_app searchspaces tests benchmarks
	$(PY) -m mypy

format: ## ruff format + import sorting
	$(PY) -m ruff format tune_app searchspaces tests benchmarks
	$(PY) -m ruff check --fix --select I tune_app searchspaces tests benchmarks

lock: ## Re-lock dependencies (slow: ~8 min of resolver time)
	.venv-tools/bin/poetry lock

# --- environment check and container targets (docker/, docs/container.md) ------------
COMPOSE ?= docker compose -f docker/docker-compose.yml
# make mlflow-ui: where the MLflow UI listens (make mlflow-ui PORT=5055 HOST=0.0.0.0). HOST is not
# taken from the environment (tcsh exports HOST=<hostname>): the UI stays on loopback unless asked.
PORT ?= 5000
HOST = 127.0.0.1
# The GPU service when this host has an NVIDIA driver, else the CPU-only profile.
SERVICE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo trainer || echo trainer-cpu)
# The image's user (compose build args UID/GID): yours, 1000 when you are root.
HOST_UID ?= $(shell id -u | sed 's/^0$$/1000/')
HOST_GID ?= $(shell id -g | sed 's/^0$$/1000/')
export HOST_UID HOST_GID
.PHONY: validate-env mlflow-ui build shell tune-container container-dirs container-uis container-smoke

validate-env: ## Check Python/packages, device, disk vs retention, MLflow, HF cache, Ray (ARGS="model=minilm")
	$(PY) -m tune_app.validate_env $(ARGS)

mlflow-ui: ## MLflow UI on http://$(HOST):$(PORT) for experiments/mlflow.db (set PORT=, HOST=)
	.venv/bin/mlflow ui --backend-store-uri sqlite:///experiments/mlflow.db --host $(HOST) --port $(PORT)

build: ## Build the container image (SERVICE=trainer: CUDA, trainer-cpu: CPU; default from nvidia-smi)
	$(COMPOSE) --profile cpu build $(SERVICE)

container-dirs: ## Create the compose mounts (experiments/, HF cache, data/) owned by the image's user
	sh docker/preflight.sh

shell: container-dirs ## A shell in the container (same mounts as tune-container)
	$(COMPOSE) --profile cpu run --rm --entrypoint bash $(SERVICE)

tune-container: container-dirs ## Run a study in the container: python -m tune_app.run ARGS (Ray dashboard port 8265)
	$(COMPOSE) --profile cpu run --rm --service-ports $(SERVICE) $(ARGS)

container-uis: container-dirs ## MLflow UI (:5000) + optuna-dashboard (:8080, STUDY_NAME) beside a study, detached
	$(COMPOSE) up -d mlflow-ui optuna-dashboard

container-smoke: ## Build the CPU image with podman and run the default study in it (root, Debian; slow)
	bash scripts/container_smoke.sh
