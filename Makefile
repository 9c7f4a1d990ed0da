# robo-runner. JOB=jobs/<name>.yaml (or a job name) for the job targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNNER := $(BIN)/runner
JOB ?= jobs/sample_dp3.yaml
EXECUTOR ?=
EXEC_FLAG := $(if $(EXECUTOR),--executor $(EXECUTOR),)
ARGS ?=  # overrides for this run, e.g. ARGS="steps.train.epochs=10 resources.gpus=[0,1]"
STEP ?=  # `make plan` of one step, e.g. STEP=train
# A venv you name (VENV=... on the command line or in the environment) is used as it is, never reinstalled;
# the default .venv is (re)installed when pyproject.toml changes.
VENV_DEPS := $(if $(filter command line environment,$(origin VENV)),,pyproject.toml)

.PHONY: help setup venv docker slurm base-image test test-docker test-all lint bench build run convert train eval deploy \
        resume shell plan validate demo clean

help:
	@echo "make setup            venv + Docker engine + local base image (root on a fresh machine)"
	@echo "make demo             run jobs/sample_dp3.yaml end to end: convert -> train -> eval"
	@echo "make test             fast unit tests (no docker, slurm or GPU)"
	@echo "make test-all         everything, with the Docker and Slurm integration tests (what CI runs)"
	@echo "make lint             ruff and mypy"
	@echo "make validate|plan|build|run|convert|train|eval|deploy|resume|shell JOB=jobs/x.yaml [EXECUTOR=local]"
	@echo "                      [ARGS='steps.train.epochs=10'] overrides; make plan STEP=train for one step"
	@echo "VENV=path             use an existing virtualenv as it is (never reinstalled)"

$(BIN)/runner: $(VENV_DEPS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,data,policy]' --config-settings editable_mode=compat
	# DeepSpeed's setup imports torch: built against the torch above; its C++/CUDA ops are left to run time.
	$(BIN)/pip install -q setuptools wheel
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation 'deepspeed>=0.15'
	@touch $@

venv: $(BIN)/runner

docker:
	.ci/setup-docker.sh

base-image:
	images/os/build.sh

setup: venv docker

test: venv
	$(BIN)/pytest -q -m "not docker and not slurm and not gpu"

test-docker: setup
	$(BIN)/pytest -q -m docker

slurm:
	.ci/setup-slurm.sh

test-all: setup slurm
	$(BIN)/pytest -q -m "not gpu"

lint: venv
	$(BIN)/ruff check runner policies robot tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/runner_overhead.py

demo: setup
	$(RUNNER) run jobs/sample_dp3.yaml $(EXEC_FLAG)

validate: venv
	$(RUNNER) validate $(JOB) $(ARGS)

plan: venv
	$(RUNNER) plan $(JOB) $(STEP) $(ARGS)

build: venv
	$(RUNNER) build $(JOB)

run: venv
	$(RUNNER) run $(JOB) $(EXEC_FLAG) $(ARGS)

convert train eval deploy: venv
	$(RUNNER) $@ $(JOB) $(EXEC_FLAG) $(ARGS)

resume: venv
	$(RUNNER) resume $(JOB) $(EXEC_FLAG) $(ARGS)

shell: venv
	$(RUNNER) shell $(JOB) $(EXEC_FLAG)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
