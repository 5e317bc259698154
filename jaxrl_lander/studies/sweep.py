"""Multi-seed sweeps: one training process per seed, or all seeds (and hyperparameter variants) as vectorised
agents in one process; then honest statistics over seeds.

Final evaluation returns are summarised as mean and interquartile mean (IQM), each with a 95% percentile
bootstrap confidence interval over seeds (the practice of rliable, Agarwal et al. 2021); learning curves as
the mean over seeds with a 95% bootstrap band.
"""

import contextlib
import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from jaxrl_lander.storage.claim import ExperimentLock
from jaxrl_lander.config import RunConfig, config_to_toml, read_toml
from jaxrl_lander.config.errors import ConfigError, Interrupted, SweepFailed
from jaxrl_lander.storage.files import (ExperimentPaths, experiment_stem, read_json, replaced_atomically,
                                        write_json_atomic)
from jaxrl_lander.outputs.plotting import plot_sweep_curves

log = logging.getLogger("jaxrl_lander")
BOOTSTRAP_SAMPLES = 2_000
CONFIDENCE = 0.95


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end)."""
    return stats.trim_mean(x, 0.25, axis=axis)


def bootstrap_ci(values: list[float], statistic, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of `statistic` over the values (one per seed)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or np.all(x == x[0]):
        return float(statistic(x)), float(statistic(x))
    result = stats.bootstrap((x,), statistic, n_resamples=BOOTSTRAP_SAMPLES, confidence_level=CONFIDENCE,
                             method="percentile", vectorized=True, axis=-1, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarize_returns(values: list[float]) -> dict[str, Any]:
    x = np.asarray(values, dtype=np.float64)
    return {
        "n": len(x),
        "values": [float(v) for v in x],
        "mean": float(x.mean()),
        "mean_ci95": bootstrap_ci(values, lambda a, axis=-1: np.mean(a, axis=axis)),
        "iqm": float(iqm(x)),
        "iqm_ci95": bootstrap_ci(values, iqm),
        "median": float(np.median(x)),
    }


def learning_curves(metrics: list[dict[str, Any]], seed: int = 0) -> dict[str, list]:
    """Rolling training return per seed on the shared record grid: mean and 95% bootstrap band over seeds.

    A bootstrap sample's mean is a weighted sum over seeds (the weights count how often it drew each), so the
    samples cost one (samples x seeds) @ (seeds x steps) product instead of a (samples, seeds, steps) copy.
    """
    by_step = [{r["timestep"]: r["reward"] for r in m["records"]} for m in metrics]
    steps = sorted(set(by_step[0]).intersection(*by_step[1:]))
    curves = np.array([[rewards.get(t) for t in steps] for rewards in by_step],
                      dtype=np.float64)  # (seeds, steps); NaN before the first episode
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(metrics), size=(BOOTSTRAP_SAMPLES, len(metrics)))
    weights = np.stack([np.bincount(row, minlength=len(metrics)) for row in picks]).astype(np.float64)
    present = ~np.isnan(curves)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0: no drawn seed has an episode yet -> NaN
        means = (weights @ np.where(present, curves, 0.0)) / (weights @ present)  # (samples, steps)
    low, high = np.full(len(steps), np.nan), np.full(len(steps), np.nan)
    full = ~np.isnan(means).any(axis=0)  # every sample has a value: the fast path, nearly every step
    low[full], high[full] = np.percentile(means[:, full], [2.5, 97.5], axis=0)
    with warnings.catch_warnings():  # all-NaN columns (no episode finished yet) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(curves, axis=0)
        for j in np.flatnonzero(~full):
            low[j], high[j] = np.nanpercentile(means[:, j], [2.5, 97.5])
    clean = lambda a: [None if np.isnan(v) else float(v) for v in a]  # noqa: E731
    return {"timestep": steps, "mean": clean(mean), "ci95_low": clean(low), "ci95_high": clean(high)}


class Children:
    """The seeds' training processes. While active, a SIGINT or SIGTERM to the sweep is passed on to each of them
    (they stop at their next step with a checkpoint) and no further seed starts; a second signal gets the
    previous behaviour back. Each child has a session of its own, so a Ctrl-C on the terminal reaches it once,
    through the sweep."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._previous: dict = {}

    def __enter__(self) -> "Children":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._forward) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _forward(self, signum, frame) -> None:
        self.signum = signum
        self.__exit__()
        with self._lock:
            for proc in self._procs:
                proc.send_signal(signum)

    def run(self, cmd: list[str], capture: bool = True) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of `cmd` (empty unless `capture`: else its output goes to ours), or of
        nothing (status 128 + signal) after a stop."""
        with self._lock:
            if self.signum is not None:
                return 128 + self.signum, "", "not started: the sweep was stopped"
            pipe = subprocess.PIPE if capture else None
            proc = subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, start_new_session=True)
            self._procs.add(proc)
        out, err = proc.communicate()
        with self._lock:
            self._procs.discard(proc)
        return proc.returncode, out or "", err or ""


def run_sweep(algo: str, seeds: list[int], variants: dict[str, RunConfig], out_dir: Path, jobs: int,
              vectorized: bool = False) -> dict[str, dict[str, Any]]:
    """Train every seed of every variant (name -> config; one variant named "" trains into out_dir itself, the
    others into out_dir/name), then write each variant's summary.json and plot; returns the summaries by name.
    Several variants also get out_dir/summary.json, holding them all.

    Each variant's config is written once to its config.toml (without its seed) and every seed trains from it:
    the sweep records what it ran, and editing the config file it came from mid-sweep changes nothing. Every seed
    resumes, so running a sweep again continues its unfinished seeds and keeps the finished ones; a sweep of the
    same name with another config is refused (ConfigError), and so is one that another process is running
    (ExperimentInUse). A summary covers these seeds and the finished ones of an earlier summary of the directory.
    Without `vectorized` each seed is a training process of its own, up to `jobs` at once; with it, all of them
    are vectorised agents of one process (agents.py).
    Raises SweepFailed, naming the failed seeds, once every seed has finished; the others' artifacts stay.
    """
    dirs = {name: out_dir / name if name else out_dir for name in variants}
    for name, config in variants.items():  # all refused or none, before anything is written
        _config_text(config, dirs[name])
    with ExperimentLock(ExperimentPaths(root=out_dir, name=out_dir.name)):  # one sweep of a name at a time
        return _run_sweep(algo, seeds, variants, dirs, out_dir, jobs, vectorized)


def _run_sweep(algo: str, seeds: list[int], variants: dict[str, RunConfig], dirs: dict[str, Path], out_dir: Path,
               jobs: int, vectorized: bool) -> dict[str, dict[str, Any]]:
    texts = {name: _config_text(config, dirs[name]) for name, config in variants.items()}  # again, held
    log.info("sweep %s: %d seed(s) x %d variant(s), %s", out_dir.name, len(seeds), len(variants),
             "as vectorised agents of this process" if vectorized else f"up to {jobs} training process(es) at once")
    for name, text in texts.items():
        dirs[name].mkdir(parents=True, exist_ok=True)
        with replaced_atomically(dirs[name] / "config.toml") as tmp:
            tmp.write_text(text)
    if vectorized:
        failures = _train_agents(seeds, variants, dirs)
    else:
        failures = {}
        for name in variants:
            failures.update({(name, seed): error for seed, error in _train_processes(algo, seeds, dirs[name],
                                                                                     jobs).items()})
    whole = [name for name in variants if not any(n == name for n, _ in failures)]
    summaries = {name: summarize_sweep(variants[name], seeds, dirs[name]) for name in whole}  # those that finished
    if list(variants) != [""] and summaries:
        covered = sorted({seed for summary in summaries.values() for seed in summary["seeds"]})
        write_json_atomic(out_dir / "summary.json", {"algorithm": algo, "seeds": covered, "variants": summaries})
    if failures:
        (name, seed), error = next(iter(failures.items()))
        where = lambda n, s: f"{n}/seed {s}" if n else f"{s}"  # noqa: E731
        raise SweepFailed(f"{len(failures)} of {len(seeds) * len(variants)} seeds failed"
                          f" ({(', ' if name else ' ').join(where(n, s) for n, s in failures)}); seed"
                          f" {where(name, seed)}: {error}")
    return summaries


def _config_text(config: RunConfig, directory: Path) -> str:
    """The config.toml a sweep writes into `directory`; ConfigError when one there holds another config (a key
    added to the package since it was written counts as its default)."""
    config_file, text = directory / "config.toml", config_to_toml(config, omit=("seed",))
    if config_file.is_file() and config_file.read_text() != text:
        try:
            differs = config.differences(read_toml(config_file), ignore=("seed",))
        except ConfigError:  # not a config any more
            differs = ["config.toml"]
        if differs:
            raise ConfigError(f"sweep {directory} exists with another config: give another --name, or delete it")
    return text


def _train_processes(algo: str, seeds: list[int], out_dir: Path, jobs: int) -> dict[int, str]:
    """Train each seed from out_dir/config.toml in a process of its own; the failed seeds' last error lines."""
    children = Children()

    def train(seed: int) -> str | None:
        """None on success, else the last line the seed's process wrote to stderr."""
        cmd = [sys.executable, "-m", "jaxrl_lander", "train", "--algo", algo, "--seed", str(seed),  # paths as
               f"--config={out_dir / 'config.toml'}", f"--results-dir={out_dir}", "--resume"]  # --x=...: "-d" too
        start = time.perf_counter()
        returncode, out, err = children.run(cmd)
        if returncode != 0:
            lines = err.strip().splitlines()
            return lines[-1] if lines else f"exit status {returncode}"
        log.info("seed %d done in %.0f s: %s", seed, time.perf_counter() - start, out.strip().partition("\n")[0])
        return None

    with children, ThreadPoolExecutor(max_workers=jobs) as pool:
        failures = {seed: error for seed, error in zip(seeds, pool.map(train, seeds)) if error is not None}
    if children.signum is not None:
        raise Interrupted(children.signum, f"sweep {out_dir.name} stopped by {signal.Signals(children.signum).name};"
                                           " its seeds saved where they were: run it again to continue")
    return failures


def _train_agents(seeds: list[int], variants: dict[str, RunConfig], dirs: dict[str, Path]
                  ) -> dict[tuple[str, int], str]:
    """Train every (variant, seed) as vectorised agents of one process; the failed ones' errors."""
    from jaxrl_lander.training.run import train_agents  # jax loads here, not for the statistics

    runs = [(name, seed) for name in variants for seed in seeds]
    configs = [dataclasses.replace(variants[name], seed=seed) for name, seed in runs]
    results = train_agents(configs, [dirs[name] for name, _ in runs])
    return {run: str(r) for run, r in zip(runs, results) if isinstance(r, Exception)}


def _summarized_seeds(config: RunConfig, seeds: list[int], out_dir: Path) -> list[int]:
    """`seeds`, and every other seed of the directory whose run completed (they all trained from its one
    config.toml, `config` but for the seed): a sweep run again for fewer seeds, or after a kill before its
    summary, adds to its summary."""
    done, stem = [], experiment_stem(config)
    for results in (out_dir / "experiments").glob(f"{stem}_seed*/{stem}_seed*_results.json"):
        seed = results.parent.name.removeprefix(f"{stem}_seed")
        if seed.isdigit() and results.name == f"{stem}_seed{seed}_results.json":
            with contextlib.suppress(OSError, ValueError):
                if read_json(results).get("status") == "completed":
                    done.append(int(seed))
    return sorted(set(seeds) | set(done))


def summarize_sweep(config: RunConfig, seeds: list[int], out_dir: Path) -> dict[str, Any]:
    """The summary of the sweep in `out_dir` of `config` (its seed aside) over `seeds`, written with its plot."""
    algo, seeds = config.algo, _summarized_seeds(config, seeds, out_dir)
    experiments = [ExperimentPaths.of(out_dir, dataclasses.replace(config, seed=seed)) for seed in seeds]
    results = [read_json(paths.results) for paths in experiments]
    metrics = [read_json(paths.metrics) for paths in experiments]
    threshold = results[0]["hyperparameters"]["solve_threshold"]
    final = [r["evaluation"]["mean"] for r in results]
    solved_at = [r["solved"]["timestep"] for r in results]
    curves = learning_curves(metrics)
    summary = {
        "algorithm": algo,
        "seeds": seeds,
        "total_timesteps": results[0]["total_timesteps"],
        "hyperparameters": {k: v for k, v in results[0]["hyperparameters"].items() if k != "seed"},
        "evaluation_episodes": results[0]["evaluation"]["episodes"],
        "final_evaluation": summarize_returns(final),
        "seeds_solved_at_end": sum(v >= threshold for v in final),
        "solve_threshold": threshold,
        "first_solved_timestep": solved_at,
        "first_solved_training_seconds": [r["solved"]["training_seconds"] for r in results],
        "training_time_seconds": [r["training_time_seconds"] for r in results],
        "learning_curves": curves,
    }
    write_json_atomic(out_dir / "summary.json", summary)
    try:
        plot_sweep_curves(curves, f"{algo.upper()} on {results[0]['environment']}, {len(seeds)} seeds",
                          out_dir / "learning_curves.png", threshold)
    except ImportError:  # the summary stands without its picture
        log.warning("no learning_curves.png: matplotlib (the plot extra) is not installed")
    return summary
