"""Shared fixtures: the suite runs on the CPU, and short real training runs are made once per session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from jaxrl_lander.config import make_config  # noqa: E402

SHORT_STEPS = 4_096  # two PPO updates of 2,048 transitions


def short_config(algo: str, **overrides):
    return make_config(algo, {"total_timesteps": SHORT_STEPS, "eval_episodes": 3, **overrides})


def load_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A session-wide persistent compilation cache: each program compiles once for the whole suite."""
    from jaxrl_lander.train import enable_compilation_cache

    os.environ["JAXRL_LANDER_JAX_CACHE"] = str(tmp_path_factory.mktemp("jax_cache"))  # for CLI subprocesses too
    enable_compilation_cache()


@pytest.fixture(scope="session")
def short_runs(tmp_path_factory):
    """One short real training run per algorithm: {algo: (trainer, results, results_dir)}."""
    from jaxrl_lander.train import Trainer

    runs = {}
    for algo in ("ppo", "a2c"):
        results_dir = tmp_path_factory.mktemp(f"results_{algo}")
        trainer = Trainer(short_config(algo), results_dir)
        runs[algo] = (trainer, trainer.train(), results_dir)
    return runs
