# One-command entry points. Each target creates .venv and installs the package (with test extras) if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

ALGO ?= ppo
SEED ?= 42
STEPS ?=
CONFIG ?=
RESUME ?=
EPISODES ?= 10

TRAIN_ARGS := --algo $(ALGO) --seed $(SEED) $(if $(STEPS),--steps $(STEPS)) $(if $(CONFIG),--config $(CONFIG)) $(if $(filter 1 yes true,$(RESUME)),--resume)

.PHONY: setup train eval test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m jaxrl_lander train $(TRAIN_ARGS)

eval: $(STAMP)
	$(PY) -m jaxrl_lander evaluate results/experiments/$(ALGO)_seed$(SEED) --episodes $(EPISODES)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
