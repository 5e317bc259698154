"""What the tests share, in one place: short configs and runs, the command line (as a child process or in this
process), snapshots of a directory, schema checks, waiting for an event, a small real disk, a PostgreSQL server.

Fixtures live in conftest.py; everything a test file imports lives here.
"""

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest

from jaxrl_lander import config as config_module
from jaxrl_lander.config import RunConfig, make_config
from jaxrl_lander.envs.normalization import PRIOR_COUNT
from jaxrl_lander.storage.files import ExperimentPaths, read_json
from jaxrl_lander.storage.results import Results

HERE = Path(__file__).parent
KILL_AT = str(HERE / "kill_at.py")
# The env ids a command-line process allows: the package's own (conftest imports this module before any test
# registers its probe envs, which the test process then allows too).
PACKAGE_ENV_IDS = dict(config_module.ENV_IDS)
SHORT_STEPS = 4_096  # two PPO updates of 2,048 transitions
TINY_TOML = "checkpoint_interval = 200\neval_episodes = 2\n"


def bench_module(name: str):
    """A script of bench/ loaded as a module (bench/ is not a package: its scripts run in SB3's venv or ours)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE.parent / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- configs and runs
def short_config(algo: str, **overrides) -> RunConfig:
    return make_config(algo, {"total_timesteps": SHORT_STEPS, "eval_episodes": 3, **overrides})


def experiment_paths(results_dir: str | Path, algo: str, seed: int, **keys) -> ExperimentPaths:
    """The paths of the experiment of `algo`'s config with `seed` (and config `keys`) under `results_dir`."""
    return ExperimentPaths.of(results_dir, make_config(algo, {"seed": seed, **keys}))


def load_json(path: Path) -> dict:
    return read_json(path)


def template_state(config: RunConfig):
    """A train state of `config`'s structure on LunarLander (8 observations, 4 actions): what checkpoints restore into."""
    from jaxrl_lander.core.algos import make_learner

    return make_learner(config, obs_dim=8, action_size=4).init(jax.random.key(0))


class Run(NamedTuple):
    config: RunConfig
    results: Results
    paths: ExperimentPaths


def train_run(config: RunConfig, results_dir: Path, **kwargs) -> Run:
    """Train `config` into results_dir as the Python API does; the run's config, results and paths."""
    from jaxrl_lander import train

    return Run(config, train(config, results_dir, **kwargs), ExperimentPaths.of(results_dir, config))


def validate(instance, schema_name: str) -> None:
    """`instance` holds to the package's JSON schema `schema_name`."""
    import jsonschema

    from jaxrl_lander.storage.schemas import load_schema

    jsonschema.Draft202012Validator(load_schema(schema_name),
                                    format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(instance)


def same_params(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a, b)


def without_times(metrics: dict) -> dict:
    """A TrainingMetrics JSON without its wall-clock fields, which no two runs share."""
    metrics = dict(metrics, metadata={k: v for k, v in metrics["metadata"].items() if k != "created_at"})
    metrics["records"] = [{k: v for k, v in r.items() if k != "timestamp"} for r in metrics["records"]]
    return metrics


def interrupted_copy(src: Path, dst: Path, keep_up_to: int) -> None:
    """A copy of a finished experiment as a run killed after its checkpoint at `keep_up_to` would leave it."""
    shutil.copytree(src, dst)
    for step_dir in (dst / "checkpoints").iterdir():
        if step_dir.name.isdigit() and int(step_dir.name) > keep_up_to:
            shutil.rmtree(step_dir)
    (dst / f"{dst.name}_results.json").unlink()
    shutil.rmtree(dst / f"{dst.name}_model")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes: equal snapshots mean nothing was written."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- doubles and oracles
class CountingHooks:
    """The training loop's hooks, counting the checkpoints and evaluations asked of it."""

    def __init__(self, collector, progress):
        self.checkpoints, self.evaluations, self.collector, self.progress = [], 0, collector, progress

    def evaluate(self, params):
        self.evaluations += 1
        return [{"episodes": 1, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}]

    def checkpoint(self, state, agents, training_seconds):
        (agent,) = [self.progress[i] for i in agents]
        self.collector.pending(agent.timestep)  # what a checkpoint takes of the rollout in progress
        self.checkpoints.append(agent.timestep)


def pooled_moments(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of all samples together with the prior (mean 0, variance 1, weight PRIOR_COUNT)."""
    n = len(samples) + PRIOR_COUNT
    mean = samples.sum(axis=0) / n
    second_moment = (PRIOR_COUNT * 1.0 + (samples**2).sum(axis=0)) / n  # the prior's E[x^2] is var + mean^2 = 1
    return mean, second_moment - mean**2


# ---------------------------------------------------------------- the command line
def cli_command(*args, point: str | None = None) -> list[str]:
    """The command line as a child process runs it; with `point`, killed there (tests/kill_at.py)."""
    return [sys.executable, *([KILL_AT, point, "--"] if point else ["-m", "jaxrl_lander"]), *map(str, args)]


def child_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", **extra)


def run_cli(*args, cwd, point: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command line in a child process of its own: for what only a process shows (its exit by a signal, the
    interpreter's start-up, the device count of a fresh JAX, a kill at a chosen moment)."""
    return subprocess.run(cli_command(*args, point=point), cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def _process_state_kept():
    """What main() sets for its process (signal handlers, exception hooks, logging), put back when it returns; and
    during the call, the env ids a fresh process allows."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    hooks = sys.unraisablehook, sys.excepthook
    root = logging.getLogger()
    root_handlers, root_level = root.handlers[:], root.level
    named = {name: logging.getLogger(name) for name in ("jaxrl_lander", "jaxrl_lander.studies.tune", "absl", "orbax", "jax",
                                                         "asyncio")}
    levels = {name: logger.level for name, logger in named.items()}
    filters = named["asyncio"].filters[:]
    environ = dict(os.environ)
    env_ids = dict(config_module.ENV_IDS)
    config_module.ENV_IDS.clear()
    config_module.ENV_IDS.update(PACKAGE_ENV_IDS)  # not the probe envs this process registered
    root.handlers = []  # so main()'s logging writes to this call's stderr, as a process's would
    try:
        yield
    finally:
        config_module.ENV_IDS.clear()
        config_module.ENV_IDS.update(env_ids)
        for handler in root.handlers:
            handler.close()
        root.handlers, root.level = root_handlers, root_level
        for name, logger in named.items():
            logger.setLevel(levels[name])
        named["asyncio"].filters = filters
        sys.unraisablehook, sys.excepthook = hooks
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.environ.clear()
        os.environ.update(environ)


def _no_exit(status: int) -> None:
    raise AssertionError(f"the command would have ended the process (os._exit({status})): run it with run_cli")


def call_main(*args, cwd) -> int:
    """The command line's main(argv) in this process, in `cwd`: its exit status. The process state main() sets is
    put back afterwards, so calls do not leak into each other or into the test process."""
    from jaxrl_lander.cli.main import main

    here = os.getcwd()
    exit_ = os._exit
    os.chdir(cwd)
    os._exit = _no_exit
    try:
        with _process_state_kept():
            try:
                return main([str(a) for a in args])
            except SystemExit as exc:  # argparse's own exits (--help, a usage error)
                return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os._exit = exit_
        os.chdir(here)


def one_error(proc, message: str, status: int = 2) -> None:
    """The command exited with `status` after exactly one stderr line, an error naming `message`."""
    assert proc.returncode == status, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxrl_lander: error: ") and message in lines[0], proc.stderr


# ---------------------------------------------------------------- tuning studies
# Trials of 1,000 steps with an evaluation (one episode) and a checkpoint every 250: a few seconds each.
SPACE = """algo = "a2c"
[settings]
total_timesteps = 1_000
checkpoint_interval = 250
eval_interval = 250
eval_interval_episodes = 1
eval_episodes = 2
[space]
learning_rate = { type = "float", low = 1e-4, high = 1e-2, log = true }
n_steps = { type = "categorical", choices = [5, 10] }
vf_coef = { type = "float", low = 0.25, high = 1.0 }
"""


def tune_args(trials: int, *extra: str) -> list[str]:
    return ["tune", "--algo", "a2c", "--space", "space.toml", "--trials", str(trials), "--jobs", "1", *extra]


def study_json(root: Path, name: str = "space") -> dict:
    return load_json(root / "results/tuning" / name / "study.json")


# ---------------------------------------------------------------- events
def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 120):
    """Poll `condition` (a file the run writes, a process it starts) until it holds, and return what it found;
    fail if `proc` ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended before {what}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} in {timeout} s")
        threading.Event().wait(0.05)
    return found


def has_checkpoint(checkpoints: Path) -> bool:
    return checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())


def imports_begun(pid: int) -> bool:
    """The process has loaded jaxlib's extension: its interpreter is up and it is inside the imports of JAX."""
    try:
        return "jaxlib" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


# ---------------------------------------------------------------- a small disk, a database server
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real tmpfs of `size` mounted at `path` for the block's length (the test is skipped where mounting one is
    not allowed: it needs root)."""
    path.mkdir(exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def postgres_bin() -> Path:
    """The directory of PostgreSQL's server programs; the test is skipped where they are not installed."""
    found = shutil.which("pg_ctl")
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    bindir = Path(found).resolve().parent if found else versions[-1].parent if versions else None
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql")
    return bindir


class Postgres:
    """A PostgreSQL server in a temporary directory on a free local port, whose user `tuner` logs in over TCP with
    the password PASSWORD; stop() and start() it to see what a lost server does to a study."""

    PASSWORD = "S3cretPW"

    def __init__(self, bindir: Path):
        self.stop_orphans(bindir)
        self.bindir, self.data = bindir, Path(tempfile.mkdtemp(prefix="jaxrl-pg-"))
        (self.data / "owner").write_text(f"{os.getpid()}\n")  # the test process whose server this is
        self.as_user = []
        if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the account Debian's package made
            shutil.chown(self.data, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (self.data / "pw").write_text(self.PASSWORD + "\n")
        if self.as_user:
            shutil.chown(self.data / "pw", "postgres")
        subprocess.run([*self.as_user, bindir / "initdb", "-D", self.data / "db", "-U", "tuner", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "--pwfile", self.data / "pw"], check=True, capture_output=True)
        self.start()

    @staticmethod
    def stop_orphans(bindir: Path) -> None:
        """Stop and remove the servers of test processes that died without stopping them (a suite killed with
        SIGKILL: the server runs in a session of its own, so the kill does not reach it)."""
        for data in Path(tempfile.gettempdir()).glob("jaxrl-pg-*"):
            try:
                os.kill(int((data / "owner").read_text()), 0)
                continue  # its test process still runs
            except ProcessLookupError:
                pass
            except (OSError, ValueError):
                continue  # not one of ours, or not written yet
            as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run([*as_user, bindir / "pg_ctl", "-D", data / "db", "-m", "immediate", "stop"],
                           capture_output=True)
            shutil.rmtree(data, ignore_errors=True)

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://tuner:{self.PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        subprocess.run([*self.as_user, self.bindir / "pg_ctl", "-D", self.data / "db", "-l", self.data / "log", "-w",
                        "start", "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"], check=True,
                       capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.as_user, self.bindir / "pg_ctl", "-D", self.data / "db", "-m", "immediate", "stop"],
                       capture_output=True)

    def new_database(self, name: str) -> str:
        """The URL of a new, empty database `name` (no tables yet: a study creates them)."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=tuner password={self.PASSWORD} dbname=postgres",
                             autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
