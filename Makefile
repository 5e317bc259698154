# One-command entry points. Each target creates .venv and installs the package (with test extras) if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

ALGO ?= ppo
SEED ?= 42
STEPS ?=
CONFIG ?=
SET ?=
RESUME ?=
OVERWRITE ?=
INIT_FROM ?=
TENSORBOARD ?=
BACKEND ?=
VECTORIZED ?=
EPISODES ?= 10

SET_ARGS := $(foreach item,$(SET),--set $(item))
# make eval and make plot: the experiment of ALGO and SEED on the default env, unless EXPERIMENT names one (a run
# on another env or env options has those in its name: results/experiments/ppo_continuous_seed1)
EXPERIMENT ?=
EXPERIMENT_DIR := $(or $(EXPERIMENT),results/experiments/$(ALGO)_seed$(SEED))
ifneq ($(and $(SET),$(filter parity,$(MAKECMDGOALS))),)
$(error make parity takes CONFIG only, not SET: write the changed keys into a config file)
endif
ifneq ($(and $(BACKEND),$(filter parity bench bench-solve bench-agents,$(MAKECMDGOALS))),)
$(error make $(filter parity bench bench-solve bench-agents,$(MAKECMDGOALS)) takes no BACKEND: parity trains on gymnasium's env as SB3 does, and the benchmarks run both)
endif
# SEED goes to the command line only when given, so that a config file's seed holds otherwise (eval and plot use 42);
# ALGO likewise beside a CONFIG, whose file names its algorithm (a best.toml of make tune does).
ALGO_ARG := $(if $(and $(CONFIG),$(filter file,$(origin ALGO))),,--algo $(ALGO))
TRAIN_ARGS := $(ALGO_ARG) $(if $(filter-out file,$(origin SEED)),--seed $(SEED)) $(if $(STEPS),--steps $(STEPS)) $(if $(CONFIG),--config $(CONFIG)) $(if $(BACKEND),--backend $(BACKEND)) $(SET_ARGS) $(if $(filter 1 yes true,$(RESUME)),--resume) $(if $(filter 1 yes true,$(TENSORBOARD)),--tensorboard) $(if $(filter 1 yes true,$(OVERWRITE)),--overwrite)

RUNS ?= 3
BENCH_VENV := .venv-bench
# The benchmark's own environment for Stable-Baselines3 (PyTorch, CPU build); not a dependency of the package.
TORCH_SPEC ?= torch==2.13.0
SB3_SPEC ?= stable-baselines3==2.9.2

SEEDS ?= 0 1 2 3 4
TRIALS ?= 50
SPACE ?= configs/tune_$(ALGO).toml
STUDY ?=
STORAGE ?=
TIMEOUT ?=

.PHONY: setup train reproduce sweep tune plot eval test test-all soak bench bench-solve bench-agents bench-tests parity clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,plot,tensorboard,envpool,tune]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m jaxrl_lander train $(TRAIN_ARGS) $(if $(INIT_FROM),--init-from '$(INIT_FROM)')

reproduce: $(STAMP)
	$(PY) -m jaxrl_lander reproduce $(filter-out --resume --tensorboard,$(TRAIN_ARGS))

sweep: $(STAMP)
	$(PY) -m jaxrl_lander sweep $(ALGO_ARG) --seeds $(SEEDS) $(if $(STEPS),--steps $(STEPS)) $(if $(CONFIG),--config $(CONFIG)) $(if $(BACKEND),--backend $(BACKEND)) $(SET_ARGS) $(if $(SWEEP_NAME),--name $(SWEEP_NAME)) $(if $(filter 1 yes true,$(VECTORIZED)),--vectorized)

# The storage URL goes to the study in the environment, not on a command line that make echoes and ps shows.
ifneq ($(STORAGE),)
tune: export JAXRL_LANDER_STORAGE = $(STORAGE)
endif
tune: $(STAMP)
	$(PY) -m jaxrl_lander tune --algo $(ALGO) --space $(SPACE) --trials $(TRIALS) $(filter-out --algo $(ALGO) --resume --tensorboard --overwrite,$(TRAIN_ARGS)) $(if $(STUDY),--study $(STUDY)) $(if $(TIMEOUT),--timeout $(TIMEOUT))

plot: $(STAMP)
	$(PY) -m jaxrl_lander plot $(EXPERIMENT_DIR)

eval: $(STAMP)
	$(PY) -m jaxrl_lander evaluate $(EXPERIMENT_DIR) --episodes $(EPISODES) $(if $(filter 1 yes true,$(SAMPLE)),--sample) $(if $(filter 1 yes true,$(RENDER)),--render)

# Both tiers run one test process per CPU (pytest-xdist). The fast tier leaves out the tests marked slow: whole
# processes, kills, sweeps, tuning studies, the soak (tests/conftest.py says which are).
test: $(STAMP)
	$(PY) -m pytest -q -n auto -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto

soak: $(STAMP)
	$(PY) -m pytest -q tests/test_soak.py  # 20 kill -9s, each at a point of the run's own progress, and resumes

$(BENCH_VENV)/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet '$(TORCH_SPEC)' '$(SB3_SPEC)' 'gymnasium[box2d]>=1.1'
	touch $@

bench: $(STAMP) $(BENCH_VENV)/.installed
	$(PY) bench/run.py --runs $(RUNS)

bench-solve: $(STAMP) $(BENCH_VENV)/.installed
	$(PY) bench/solve.py

bench-agents: $(STAMP)
	$(PY) bench/agents.py

bench-tests: $(STAMP)
	$(PY) bench/tests.py --runs $(RUNS)

parity: $(STAMP) $(BENCH_VENV)/.installed
	$(PY) bench/parity.py --seeds $(SEEDS) $(if $(CONFIG),--config $(CONFIG))

clean:
	rm -rf $(VENV) $(BENCH_VENV) *.egg-info .pytest_cache
