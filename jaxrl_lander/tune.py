"""Tuning studies on Optuna: every trial is a real training run kept under results/tuning/<study>/, pruned on its
evaluations during training; the study lives in an RDB storage, a SQLite file in that directory by default or any
Optuna storage URL that workers on several machines share.

The objective is OBJECTIVE. `trials` is the study's total, whoever runs them: a worker runs trials until the
study holds that many complete, pruned or running ones; a trial whose worker died (no heartbeat) or was stopped
is failed, counted no more, and retried with the same values by the next worker, resuming from its checkpoints.
"""

import contextlib
import fcntl
import logging
import signal
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from jaxrl_lander.config import RunConfig, config_to_toml, make_config
from jaxrl_lander.errors import (ConfigError, ExperimentInUse, Interrupted, ResumeError, TrainingFailed,
                                  first_line)
from jaxrl_lander.experiment import train
from jaxrl_lander.files import ExperimentPaths, replaced_atomically, write_json_atomic
from jaxrl_lander.outputs import Watch
from jaxrl_lander.sweep import Children
from jaxrl_lander.tune_space import Space, trial_config

log = logging.getLogger("jaxrl_lander.tune")

OBJECTIVE = ("the mean, over a trial's evaluations during training, of their mean return: a config that solves"
             " early scores above one that gets there at the end")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
MAX_RETRIES = 2  # a trial that kills its worker again and again is given up after this many retries
PRUNERS = ("median", "hyperband", "none")


class Pruning(Watch):
    """Reports the running objective at each evaluation during training and stops a trial the pruner gives up."""

    def __init__(self, trial: optuna.Trial):
        self.trial, self.means = trial, []

    def evaluation(self, step: int, summary: dict[str, Any], final: bool = False) -> None:
        if final:
            return
        self.means.append(summary["mean"])
        self.trial.report(float(np.mean(self.means)), step)
        if self.verdict is None and self.trial.should_prune():
            self.verdict = f"pruned by the study at step {step}"


class _Surplus(Exception):
    """A trial started while the study was full (two workers asked at once); it trains nothing."""


class _Failed(Exception):
    """A trial that could not run (its experiment held by another process, or not resumable)."""


def open_storage(url: str, heartbeat: int) -> RDBStorage:
    """The study storage at `url`, with a heartbeat every `heartbeat` seconds (stale after three missed)."""
    import sqlalchemy

    shown = sqlalchemy.make_url(url).render_as_string(hide_password=True) if "://" in url else url
    connect = {"timeout": 60} if url.startswith("sqlite") else {"connect_timeout": 10} if "postgres" in url else {}
    try:
        return RDBStorage(url, engine_kwargs={"connect_args": connect}, heartbeat_interval=heartbeat,
                          grace_period=3 * heartbeat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except Exception as exc:  # an unreachable server, bad credentials, an unknown dialect or driver
        raise ConfigError(f"cannot open the study storage {shown}: {first_line(exc)}") from None


def _pruner(name: str, config: RunConfig) -> optuna.pruners.BasePruner:
    if name == "median":  # judged from a third of the run on, once 5 trials have reported
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=config.total_timesteps // 3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=config.eval_interval, max_resource=config.total_timesteps)
    return optuna.pruners.NopPruner()


def _identity(base: RunConfig, space: Space) -> dict[str, Any]:
    return {"base_config": base.to_dict(), "space": space.ranges}


def _slots(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state in COUNTED]


class Study:
    """One worker's handle on a study: open or join it, run trials until it is full, write its report."""

    def __init__(self, name: str, base: RunConfig, space: Space, trials: int, out_dir: Path,
                 storage: str | None = None, pruner: str = "median", heartbeat: int = 30,
                 timeout: float | None = None):
        if base.eval_interval <= 0:
            raise ConfigError("tuning needs eval_interval > 0: the objective and the pruner read the evaluations"
                              " during training")
        self.name, self.base, self.space, self.total, self.out_dir = name, base, space, trials, out_dir
        self.timeout = timeout  # seconds after which this worker starts no new trial
        out_dir.mkdir(parents=True, exist_ok=True)
        url = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retries
        with _file_lock(out_dir / ".storage.lock"):  # two workers creating one SQLite file's tables at once
            self.storage = open_storage(url, heartbeat)
        sampler = optuna.samplers.TPESampler(n_startup_trials=8, constant_liar=True)  # liar: workers spread out
        self.study = optuna.create_study(study_name=name, storage=self.storage, sampler=sampler,
                                         pruner=_pruner(pruner, base), direction="maximize", load_if_exists=True)
        identity, held = _identity(base, space), self.study.user_attrs
        if held and {k: held.get(k) for k in identity} != identity:
            raise ConfigError(f"study '{name}' was made with another config or search space: give another --study,"
                              " or the same config, settings and space")
        for key, value in identity.items():
            self.study.set_user_attr(key, value)
        self.current: int | None = None  # the number of the trial this worker is running

    # ---------------------------------------------------------------- running trials
    def pending(self) -> bool:
        """Whether the study wants another trial: a retry waits, or fewer than `total` are counted."""
        trials = self.study.get_trials(deepcopy=False)
        return any(t.state == TrialState.WAITING for t in trials) or len(_slots(trials)) < self.total

    def run(self) -> None:
        """Run trials until the study is full; a stop (Ctrl-C, SIGTERM) fails the trial in hand and queues its
        retry, then raises Interrupted."""
        optuna.storages.fail_stale_trials(self.study)
        if not self.pending():
            log.info("study %s holds its %d trials already", self.name, self.total)
            return
        try:
            self.study.optimize(self._objective, callbacks=[self._after], catch=(_Surplus, _Failed),
                                timeout=self.timeout, gc_after_trial=False)
        except (Interrupted, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            stopped = next((t for t in self.study.get_trials() if t.number == self.current), None)
            if stopped is not None and stopped.state == TrialState.FAIL:
                RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(self.study, stopped)
            raise Interrupted(signum, f"study {self.name} stopped during trial {self.current}, which the next worker"
                                      " retries from its checkpoints: run the same command again") from None

    def run_workers(self, command: list[str], jobs: int) -> None:
        """Run trials in `jobs` processes of `command` at once (each a worker of this study) until it is full; a
        Ctrl-C or SIGTERM reaches each once, and each stops as run() does."""
        children = Children()
        with children, ThreadPoolExecutor(max_workers=jobs) as pool:
            codes = list(pool.map(lambda _: children.run(command, capture=False)[0], range(jobs)))
        if children.signum is not None:
            raise Interrupted(children.signum, f"study {self.name} stopped by {signal.Signals(children.signum).name};"
                                               " the trials in hand are retried from their checkpoints: run the"
                                               " same command again")
        if any(codes):
            raise TrainingFailed(f"a worker of study {self.name} exited with status {max(codes)} (its error is above)")

    def _objective(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        trials = self.study.get_trials(deepcopy=False)
        retry_of = next(t for t in trials if t.number == trial.number).system_attrs.get("failed_trial")
        if retry_of is None and sum(t.number < trial.number for t in _slots(trials)) >= self.total:
            self.study.stop()
            trial.set_user_attr("surplus", "the study was full when this trial started (two workers asked at once)")
            raise _Surplus("the study was full when this trial started")
        values = self.space.suggest(trial)
        try:
            config = trial_config(self.base, values)
        except ConfigError as exc:  # counted: a space whose every draw is refused still ends
            trial.set_user_attr("refused", str(exc))
            raise optuna.TrialPruned(f"refused: {exc}") from None
        directory = self.out_dir / f"trial_{trial.number if retry_of is None else retry_of:04d}"
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("experiment", str(ExperimentPaths.of(directory, config.algo, config.seed).root))
        watch = Pruning(trial)
        try:
            results = train(config, directory, resume=True, progress_bar=False, watch=watch)
        except TrainingFailed as exc:  # diverged: as bad as pruned, and counted
            trial.set_user_attr("failure", str(exc))
            raise optuna.TrialPruned(f"training failed: {exc}") from None
        except (ExperimentInUse, ResumeError) as exc:
            trial.set_user_attr("failure", str(exc))
            raise _Failed(str(exc)) from None
        if results.status == "interrupted":
            if watch.verdict is not None and results.reason == watch.verdict:
                raise optuna.TrialPruned(watch.verdict)
            raise Interrupted(signal.SIGTERM if "SIGTERM" in (results.reason or "") else signal.SIGINT,
                              results.reason or "stopped")
        trial.set_user_attr("final_evaluation", results.evaluation["mean"])
        return float(np.mean([e["mean"] for e in results.evaluations_during_training]))

    def _after(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.current = None
        if trial.state == TrialState.COMPLETE:
            log.info("trial %d: objective %.1f, final evaluation %.1f | %s", trial.number, trial.value,
                     trial.user_attrs["final_evaluation"], _params_text(trial.params))
        elif trial.state == TrialState.PRUNED:
            reason = (trial.user_attrs.get("refused") or trial.user_attrs.get("failure")
                      or f"pruned at step {trial.last_step}")
            log.info("trial %d: %s | %s", trial.number, reason, _params_text(trial.params))
        elif "surplus" not in trial.user_attrs:
            log.warning("trial %d failed: %s", trial.number, trial.user_attrs.get("failure", "see the log above"))
        if not self.pending():
            study.stop()
        with contextlib.suppress(OSError):  # the report is refreshed after each trial; the last write matters
            self.report()

    # ---------------------------------------------------------------- the report
    def report(self, plots: bool = False) -> dict[str, Any]:
        """study.json (every trial), best.toml (the best complete trial's config, seed left to the command)
        and, with `plots`, the optimisation history and parameter importances as PNGs."""
        trials = self.study.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value) if complete else None
        data = {
            "study": self.name, "direction": "maximize", "objective": OBJECTIVE, "trials_total": self.total,
            "trials_counted": len(_slots(trials)), "search_space": self.space.ranges,
            "base_config": self.base.to_dict(),
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                                 "config": str(self.out_dir / "best.toml")},
            "trials": [_trial_row(t) for t in trials],
        }
        write_json_atomic(self.out_dir / "study.json", data)
        if best is not None:
            config = make_config(self.base.algo, best.user_attrs["config"])
            with replaced_atomically(self.out_dir / "best.toml") as tmp:
                tmp.write_text(f"# The best trial ({best.number}) of study '{self.name}': objective {best.value:.1f},"
                               f" final evaluation {best.user_attrs['final_evaluation']:.1f}.\n"
                               f"# The seed is the command's: make train CONFIG=<this file> SEED=...\n"
                               + config_to_toml(config, omit=("seed",)))
        if plots:
            self._plots(len(complete))
        return data

    def _plots(self, complete: int) -> None:
        from jaxrl_lander.plotting import _pyplot, save_figure

        plt = _pyplot()
        from optuna.visualization import matplotlib as vis

        for name, draw, needs in (("history.png", vis.plot_optimization_history, 1),
                                  ("importances.png", vis.plot_param_importances, 2)):
            if complete < needs:
                log.info("no %s: it needs %d complete trial(s), the study has %d", name, needs, complete)
                continue
            try:
                axes = draw(self.study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of a space no trial varied
                log.info("no %s: %s", name, first_line(exc))
                continue
            save_figure(axes.figure, self.out_dir / name)
            plt.close(axes.figure)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration else None
    attrs = {k: v for k, v in t.user_attrs.items() if k != "config"}
    return {"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
            "duration_seconds": duration, "retry_of": t.system_attrs.get("failed_trial"),
            "intermediate_values": {str(step): v for step, v in sorted(t.intermediate_values.items())}, **attrs}


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
