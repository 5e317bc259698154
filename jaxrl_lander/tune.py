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
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from jaxrl_lander.config import RunConfig, make_config
from jaxrl_lander.errors import (ConfigError, ExperimentInUse, Interrupted, ResumeError, TrainingFailed,
                                  first_line)
from jaxrl_lander.agents import train_agents
from jaxrl_lander.experiment import train
from jaxrl_lander.files import ExperimentPaths
from jaxrl_lander.outputs import Sink, Watch
from jaxrl_lander.sweep import Children, iqm
from jaxrl_lander.tune_report import params_text, write_report
from jaxrl_lander.tune_space import Space, trial_config

log = logging.getLogger("jaxrl_lander.tune")

OBJECTIVE = ("the mean, over a trial's evaluations during training, of their mean return (with several seeds,"
             " the IQM of that over the seeds): a config that solves early scores above one that solves late")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
MAX_RETRIES = 2  # a trial that kills its worker again and again is given up after this many retries
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
PRUNERS = ("median", "hyperband", "none")


class Pruning(Watch):
    """Reports the running objective at each evaluation during training (the IQM over a trial's agents once each
    has evaluated at that step) and stops the trial when the pruner gives up on it."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.means: dict[int, list[float]] = {}  # agent -> its evaluations' mean returns so far
        self.at: dict[int, dict[int, float]] = {}  # step -> agent -> its running objective there

    def sink(self, agent: int) -> Sink:
        self.means[agent] = []
        return _AgentEvaluations(self, agent)

    def resumed(self, agent: int, evaluations: list[dict[str, Any]]) -> None:
        for evaluation in evaluations:  # a retry's curve starts where its stopped run's began
            self.evaluated(agent, evaluation["timestep"], evaluation["mean"])

    def evaluated(self, agent: int, step: int, mean_return: float) -> None:
        self.means[agent].append(mean_return)
        at = self.at.setdefault(step, {})
        at[agent] = float(np.mean(self.means[agent]))
        if len(at) == len(self.means):
            self.trial.report(float(iqm(np.array(list(at.values())))), step)
            if self.verdict is None and self.trial.should_prune():
                self.verdict = f"pruned by the study at step {step}"


class _AgentEvaluations(Sink):
    def __init__(self, watch: Pruning, agent: int):
        self.watch, self.agent = watch, agent

    def evaluation(self, step: int, summary: dict[str, Any], final: bool = False) -> None:
        if not final:
            self.watch.evaluated(self.agent, step, summary["mean"])


class _Surplus(Exception):
    """A trial started while the study was full (two workers asked at once); it trains nothing."""


class _Failed(Exception):
    """A trial that could not run (its experiment held by another process, or not resumable)."""


def open_storage(url: str, heartbeat: int) -> RDBStorage:
    """The study storage at `url`, with a heartbeat every `heartbeat` seconds (stale after three missed)."""
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


def _identity(base: RunConfig, space: Space, seeds: list[int]) -> dict[str, Any]:
    return {"base_config": base.to_dict(), "space": space.ranges, "seeds": seeds}


def _slots(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state in COUNTED]


class Study:
    """One worker's handle on a study: open or join it, run trials until it is full, write its report."""

    def __init__(self, name: str, base: RunConfig, space: Space, trials: int, out_dir: Path,
                 storage: str | None = None, pruner: str = "median", heartbeat: int = 30,
                 timeout: float | None = None, seeds: list[int] | None = None):
        if base.eval_interval <= 0:
            raise ConfigError("tuning needs eval_interval > 0: the objective and the pruner read the evaluations"
                              " during training")
        self.name, self.base, self.space, self.total, self.out_dir = name, base, space, trials, out_dir
        self.seeds = seeds or [base.seed]  # several: each trial trains them as vectorised agents
        self.timeout, self.heartbeat = timeout, heartbeat  # timeout: no new trial after it (seconds)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets a line of ours
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retries
        if storage:
            self.storage = open_storage(storage, heartbeat)
        else:  # a SQLite file in the study's directory, its tables created by one worker at a time
            out_dir.mkdir(parents=True, exist_ok=True)
            with _file_lock(out_dir / ".storage.lock"):
                self.storage = open_storage(f"sqlite:///{(out_dir / 'study.db').resolve()}", heartbeat)
        sampler = optuna.samplers.TPESampler(n_startup_trials=8, constant_liar=True)  # liar: workers spread out
        try:
            self.study = optuna.create_study(study_name=name, storage=self.storage, sampler=sampler,
                                             pruner=_pruner(pruner, base), direction="maximize", load_if_exists=True)
            identity, held = _identity(base, space, self.seeds), self.study.user_attrs
            if held and {k: held.get(k) for k in identity} != identity:
                differs = ", ".join(k.replace("_", " ") for k in identity if held.get(k) != identity[k])
                raise ConfigError(f"study '{name}' was made with another {differs}: give another --study, or the"
                                  " same config, settings, space, --steps and seeds")
            for key, value in identity.items():
                self.study.set_user_attr(key, value)
        except STORAGE_ERRORS as exc:  # it opens, but cannot be written (read-only, full)
            raise ConfigError(f"cannot write the study storage: {first_line(exc)}") from None
        out_dir.mkdir(parents=True, exist_ok=True)
        self.current: int | None = None  # the number of the trial this worker is running

    # ---------------------------------------------------------------- running trials
    def pending(self) -> bool:
        """Whether the study wants another trial: a retry waits, or fewer than `total` are counted."""
        trials = self.study.get_trials(deepcopy=False)
        return any(t.state == TrialState.WAITING for t in trials) or len(_slots(trials)) < self.total

    def run(self) -> None:
        """Run trials until the study is full, then wait while other workers' trials run (one whose worker dies
        is retried here); past the timeout, start none. A stop (Ctrl-C, SIGTERM) fails the trial in hand, queues
        its retry and raises Interrupted."""
        started, waiting = time.monotonic(), False
        try:
            while self.timeout is None or time.monotonic() - started < self.timeout:
                optuna.storages.fail_stale_trials(self.study)
                if self.pending():
                    left = None if self.timeout is None else self.timeout - (time.monotonic() - started)
                    try:
                        self.study.optimize(self._objective, callbacks=[self._after], catch=(_Surplus, _Failed),
                                            timeout=left, gc_after_trial=False)
                    except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
                        # "Cannot tell a FAIL trial": this worker stalled, its trial went to a retry (that counts it)
                        if isinstance(exc, ValueError) and "Cannot tell" not in str(exc):
                            raise
                        log.warning("trial %s was retried elsewhere while this worker stalled; the retry counts"
                                    " the run it finished", self.current)
                        self.current = None
                    continue
                running = sum(t.state == TrialState.RUNNING for t in self.study.get_trials(deepcopy=False))
                if not running:
                    break
                if not waiting:
                    log.info("study %s: waiting for %d trial(s) of other workers", self.name, running)
                waiting = True
                time.sleep(self.heartbeat)
        except (Interrupted, KeyboardInterrupt, TrainingFailed) as exc:
            stopped = next((t for t in self.study.get_trials() if t.number == self.current), None)
            if stopped is not None and stopped.state == TrialState.FAIL:  # a stop uses up no retry
                RetryHeartbeatStaleTrialCallback(max_retry=None)(self.study, stopped)
            during = "between trials" if self.current is None else f"during trial {self.current}, which is retried"
            if isinstance(exc, TrainingFailed):
                raise TrainingFailed(f"{exc}; study {self.name} stopped {during} when it runs again") from None
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            raise Interrupted(signum, f"study {self.name} stopped {during}: run the same command again to go on"
                                      " (a stopped trial resumes from its checkpoints)") from None
        except STORAGE_ERRORS as exc:  # the storage failed under us (a full disk, a lost server)
            raise TrainingFailed(f"the storage of study {self.name} failed: {first_line(exc)}") from None

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
        configs = [make_config(config.algo, {**config.to_dict(), "seed": seed}) for seed in self.seeds]
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("experiments", [str(ExperimentPaths.of(directory, c.algo, c.seed).root) for c in configs])
        watch = Pruning(trial)
        try:
            if len(configs) == 1:
                runs = [train(config, directory, resume=True, progress_bar=False, watch=watch)]
            else:  # vectorised agents, one per seed
                runs = train_agents(configs, [directory] * len(configs), progress_bar=False, watch=watch)
        except (ExperimentInUse, ResumeError) as exc:
            trial.set_user_attr("failure", str(exc))
            if isinstance(exc, ExperimentInUse) and retry_of is not None:  # its first worker stalled, not died:
                trial.set_user_attr("requeue", True)  # try again a heartbeat later, until that run is done
                time.sleep(self.heartbeat)
            raise _Failed(str(exc)) from None
        except TrainingFailed as exc:
            if str(exc).startswith("could not"):  # a write failed (a full disk): the worker stops, the trial waits
                raise
            runs = [exc]
        failed = next((r for r in runs if isinstance(r, Exception)), None)
        if failed is not None:  # diverged: as bad as pruned, and counted
            trial.set_user_attr("failure", str(failed))
            raise optuna.TrialPruned(f"training failed: {failed}")
        stopped = next((r for r in runs if r.status == "interrupted"), None)
        if stopped is not None:
            if watch.verdict is not None and stopped.reason == watch.verdict:
                raise optuna.TrialPruned(watch.verdict)
            raise Interrupted(signal.SIGTERM if "SIGTERM" in (stopped.reason or "") else signal.SIGINT,
                              stopped.reason or "stopped")
        values = [float(np.mean([e["mean"] for e in r.evaluations_during_training])) for r in runs]
        trial.set_user_attr("final_evaluation", float(np.mean([r.evaluation["mean"] for r in runs])))
        if len(runs) > 1:
            trial.set_user_attr("seed_values", values)
        return float(iqm(np.array(values)))

    def _after(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.current = None
        if trial.state == TrialState.FAIL and trial.user_attrs.get("requeue"):
            RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)
        if trial.state == TrialState.COMPLETE:
            log.info("trial %d: objective %.1f, final evaluation %.1f | %s", trial.number, trial.value,
                     trial.user_attrs["final_evaluation"], params_text(trial.params))
        elif trial.state == TrialState.PRUNED:
            reason = (trial.user_attrs.get("refused") or trial.user_attrs.get("failure")
                      or f"pruned at step {trial.last_step}")
            log.info("trial %d: %s | %s", trial.number, reason, params_text(trial.params))
        elif "surplus" not in trial.user_attrs:
            log.warning("trial %d failed: %s", trial.number, trial.user_attrs.get("failure", "see the log above"))
        if not self.pending():
            study.stop()
        with contextlib.suppress(OSError):  # the report is refreshed after each trial; the last write matters
            self.report()

    # ---------------------------------------------------------------- the report
    def report(self, plots: bool = False) -> dict[str, Any]:
        """study.json, best.toml and, with `plots`, the PNGs (tune_report.py); what study.json holds."""
        trials = self.study.get_trials()
        header = {"study": self.name, "direction": "maximize", "objective": OBJECTIVE, "trials_total": self.total,
                  "trials_counted": len(_slots(trials)), "seeds": self.seeds, "search_space": self.space.ranges,
                  "base_config": self.base.to_dict()}
        return write_report(self.study, trials, header, self.out_dir, plots)


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
