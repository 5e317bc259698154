"""The suite's fixtures (the functions tests import are in helpers.py) and its two tiers.

`make test` runs the fast tier (`-m "not slow"`); `make test-all` runs every test. A test is `slow` when it needs
whole processes or many seconds of training: end-to-end runs, kills, sweeps, tuning studies, the soak. A test
marked `needs("module")` is skipped, with the reason, where that optional extra is not installed.
"""

import fcntl
import importlib.util
import os
import shutil
import signal
import subprocess
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and so would every command
# it starts: the tests of Ctrl-C need the terminal's disposition, which the commands they start inherit.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
from helpers import (TINY_TOML, Postgres, Run, call_main, experiment_paths, postgres_bin, short_config,  # noqa: E402
                     tmpfs)

from jaxrl_lander.config.errors import EXTRAS  # noqa: E402
from jaxrl_lander.storage.results import Results  # noqa: E402



def pytest_configure(config):
    config.addinivalue_line("markers", "slow: whole processes or many seconds of training; make test-all runs it")
    config.addinivalue_line("markers", "needs(module): skipped, naming the extra to install, without that module")


def pytest_runtest_setup(item):
    for marker in item.iter_markers("needs"):
        for module in marker.args:
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{module} is not installed: pip install -e '.[{EXTRAS.get(module, module)}]'")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for this run of the suite: each program compiles once, in whichever test
    process (pytest-xdist worker, or CLI subprocess) needs it first."""
    from jaxrl_lander.training.runtime import enable_compilation_cache

    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"  # workers share it
    cache.mkdir(exist_ok=True)
    os.environ["JAXRL_LANDER_JAX_CACHE"] = str(cache)  # for CLI subprocesses too
    enable_compilation_cache()


def once_per_run(tmp_path_factory, name: str, build) -> Path:
    """The directory `name`, made by `build(directory)` once per run of the suite: under pytest-xdist the first
    test process to ask builds it while the others wait, then all read it (tests copy it before changing it)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    directory, done = shared / name, shared / f"{name}.built"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if directory.exists():  # a build that failed in another process: start again
                shutil.rmtree(directory)
            directory.mkdir()
            build(directory)
            done.touch()
    return directory


@pytest.fixture(scope="session")
def short_runs(tmp_path_factory) -> dict[str, Run]:
    """One short real training run per algorithm (4,096 steps: two PPO updates), trained once per run."""
    from jaxrl_lander import train

    def build(directory: Path) -> None:
        for algo in ("ppo", "a2c"):
            train(short_config(algo), directory / algo)

    root = once_per_run(tmp_path_factory, "short_runs", build)
    runs = {}
    for algo in ("ppo", "a2c"):
        paths = experiment_paths(root / algo, algo, 42)
        runs[algo] = Run(short_config(algo), Results.load(paths.results), paths)
    return runs


@pytest.fixture(scope="session")
def finished_cli_run(tmp_path_factory) -> Path:
    """A directory holding tiny.toml and one 400-step A2C experiment finished through the command line (checkpoints
    at 200 and 400), made once per run: tests copy it before changing anything."""
    def build(root: Path) -> None:
        (root / "tiny.toml").write_text(TINY_TOML)
        assert call_main("train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--quiet", cwd=root) == 0

    return once_per_run(tmp_path_factory, "finished_cli_run", build)


@pytest.fixture
def finished_copy(finished_cli_run, tmp_path):
    """A copy of finished_cli_run in this test's own directory, to change as the test likes."""
    subprocess.run(["cp", "-a", f"{finished_cli_run}/.", str(tmp_path)], check=True)
    return tmp_path


@pytest.fixture
def cli(capfd):
    """The command line in this process: cli(*args, cwd=...) returns a CompletedProcess with its exit status and
    everything written to stdout and stderr (by Python or by the libraries below it), as a child's would hold."""
    def run(*args, cwd) -> subprocess.CompletedProcess:
        capfd.readouterr()
        status = call_main(*args, cwd=cwd)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["jaxrl_lander", *map(str, args)], status, out, err)

    return run


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the tests that need one (one per test process)."""
    server = Postgres(postgres_bin())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB disk (tmpfs) at tmp_path/disk."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk
