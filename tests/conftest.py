"""Shared fixtures: the suite runs on the CPU, and short real training runs are made once per session."""

import os
import signal

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and so would every command
# it starts: the tests of Ctrl-C need the terminal's disposition, which the commands they start inherit.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxrl_lander.config import RunConfig, make_config  # noqa: E402
from jaxrl_lander.files import ExperimentPaths, read_json  # noqa: E402
from jaxrl_lander.results import Results  # noqa: E402

SHORT_STEPS = 4_096  # two PPO updates of 2,048 transitions


def short_config(algo: str, **overrides):
    return make_config(algo, {"total_timesteps": SHORT_STEPS, "eval_episodes": 3, **overrides})


def load_json(path: Path) -> dict:
    return read_json(path)


def template_state(config: RunConfig):
    """A train state of `config`'s structure on LunarLander (8 observations, 4 actions): what checkpoints restore into."""
    from jaxrl_lander.algos import make_learner

    return make_learner(config, obs_dim=8, num_actions=4).init(jax.random.key(0))


class Run(NamedTuple):
    config: RunConfig
    results: Results
    paths: ExperimentPaths


def train_run(config: RunConfig, results_dir: Path, **kwargs) -> Run:
    """Train `config` into results_dir as the Python API does; the run's config, results and paths."""
    from jaxrl_lander import train

    return Run(config, train(config, results_dir, **kwargs), ExperimentPaths.of(results_dir, config.algo, config.seed))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for this run of the suite: each program compiles once, in whichever test
    process (pytest-xdist worker, or CLI subprocess) needs it first."""
    from jaxrl_lander.runtime import enable_compilation_cache

    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"  # workers share it
    cache.mkdir(exist_ok=True)
    os.environ["JAXRL_LANDER_JAX_CACHE"] = str(cache)  # for CLI subprocesses too
    enable_compilation_cache()


@pytest.fixture(scope="session")
def short_runs(tmp_path_factory) -> dict[str, Run]:
    """One short real training run per algorithm."""
    return {algo: train_run(short_config(algo), tmp_path_factory.mktemp(f"results_{algo}")) for algo in ("ppo", "a2c")}


TINY_TOML = "checkpoint_interval = 200\neval_episodes = 2\n"


@pytest.fixture(scope="session")
def finished_cli_run(tmp_path_factory) -> Path:
    """A directory holding tiny.toml and one 400-step A2C experiment finished through the command line (checkpoints
    at 200 and 400), made once per test process: tests copy it before changing anything."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("finished_cli_run")
    (root / "tiny.toml").write_text(TINY_TOML)
    proc = subprocess.run([sys.executable, "-m", "jaxrl_lander", "train", "--algo", "a2c", "--steps", "400", "--config",
                           "tiny.toml", "--quiet"], cwd=root, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    return root
