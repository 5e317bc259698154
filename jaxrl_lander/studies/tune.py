"""Tuning studies on Optuna: every trial is a real training run kept under results/tuning/<study>/, pruned on its
evaluations during training; the study lives in an RDB storage, a SQLite file in that directory by default or any
Optuna storage URL that workers on several machines share.

The objective is OBJECTIVE. `trials` is the study's total, whoever runs them: a worker runs trials until the
study holds that many complete, pruned or running ones; a trial whose worker died (no heartbeat) or was stopped
is failed, counted no more, and retried with the same values by the next worker, resuming from its checkpoints.
A worker whose trials fail FAILURES_IN_A_ROW times in a row stops, naming the last one's cause.

One job: running a study's trials, from the workers that share it down to the watch that prunes one trial;
its search space, storage and report are modules of their own.
"""

import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from jaxrl_lander.config import RunConfig, make_config
from jaxrl_lander.config.errors import (ConfigError, ExperimentInUse, Interrupted, ResumeError, TrainingFailed,
                                  first_line)
from jaxrl_lander.training.run import train_agents
from jaxrl_lander.storage.files import ExperimentPaths
from jaxrl_lander.outputs import Sink, Watch
from jaxrl_lander.config.redact import RedactingFilter, redact
from jaxrl_lander.studies.sweep import Children, iqm
from jaxrl_lander.studies.tune_report import params_text, write_report
from jaxrl_lander.studies.tune_space import Space, trial_config
from jaxrl_lander.studies.tune_storage import (STORAGE_ENV, STORAGE_ERRORS, Retry, claim_identity, open_storage,
                                       storage_failure)

log = logging.getLogger("jaxrl_lander.studies.tune")
log.addFilter(RedactingFilter())  # a failure's text may quote a command line or a storage URL

OBJECTIVE = ("the mean, over a trial's evaluations during training, of their mean return (with several seeds,"
             " the IQM of that over the seeds): a config that solves early scores above one that solves late;"
             " with eval_interval >= total_timesteps, the final evaluation's mean return")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FAILURES_IN_A_ROW = 3  # a worker whose trials keep failing stops instead of starting new ones forever
# Where a worker process of run_workers leaves the line that ends it, for the command to tell once for all
WORKER_ERRORS_ENV = "JAXRL_LANDER_WORKER_ERRORS"
PRUNERS = ("median", "hyperband", "none")
WAIT_POLL = 1.0  # seconds between a waiting worker's looks at the other workers' trials


class Pruning(Watch):
    """Reports the running objective at each evaluation during training (the IQM over a trial's agents once each
    has evaluated at that step) and stops the trial when the pruner gives up on it."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.means: dict[int, list[float]] = {}  # agent -> its evaluations' mean returns so far
        self.at: dict[int, dict[int, float]] = {}  # step -> agent -> its running objective there
        self.storage_error: Exception | None = None  # the storage failed: the runs stop, the worker says so

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
        if len(at) == len(self.means) and self.storage_error is None:
            try:
                self.trial.report(float(iqm(np.array(list(at.values())))), step)
                if self.verdict is None and self.trial.should_prune():
                    self.verdict = f"pruned by the study at step {step}"
            except STORAGE_ERRORS as exc:  # stop at the next step, with a checkpoint the retry resumes from
                self.storage_error, self.verdict = exc, "the study's storage failed"


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


class _StudyFailing(TrainingFailed):
    """FAILURES_IN_A_ROW trials of this worker failed in a row: the study stops, naming the last one's cause."""


def unprunable(config: RunConfig) -> str | None:
    """Why trials of `config` are scored by their final evaluation, when they are: no evaluation during
    training falls before their last step."""
    if config.eval_interval >= config.total_timesteps:
        return (f"eval_interval {config.eval_interval} >= steps {config.total_timesteps}: trials are scored by their"
                " final evaluation and cannot be pruned")
    return None


def _score(config: RunConfig, run) -> float:
    """A run's objective: the mean of its evaluations during training, or (unprunable) its final evaluation."""
    if unprunable(config):
        return float(run.evaluation["mean"])
    return float(np.mean([e["mean"] for e in run.evaluations_during_training]))


def worker_command(argv: list[str]) -> list[str]:
    """The command of one of a study's worker processes: this command's `argv` without its --storage (or an
    abbreviation that argparse took for it) and the URL after it; the worker reads that from STORAGE_ENV."""
    kept, skip = [], False
    for token in argv:
        name, equals, _ = token.partition("=")
        if not skip and len(name) >= len("--sto") and "--storage".startswith(name):
            skip = not equals
        elif not skip:
            kept.append(token)
        else:
            skip = False
    return [sys.executable, "-m", "jaxrl_lander", *kept, "--jobs", "1", "--worker"]


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
        logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)  # its failures reach us as exceptions
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retries
        self.url = storage  # what the workers started here get (in their environment, never on their command line)
        trials_here = sorted(p.name for p in out_dir.glob("trial_*")) if out_dir.is_dir() else []
        if trials_here and storage is None and not (out_dir / "study.db").exists():
            raise self._not_ours(trials_here, str(out_dir / "study.db"))
        self.storage = open_storage(storage, out_dir / "study.db", heartbeat)
        self.where = redact(storage) if storage else str(out_dir / "study.db")
        sampler = optuna.samplers.TPESampler(n_startup_trials=8, constant_liar=True)  # liar: workers spread out
        try:
            if trials_here and name not in {s.study_name for s in self.storage.get_all_studies()}:
                raise self._not_ours(trials_here, self.where)
            self.study = optuna.create_study(study_name=name, storage=self.storage, sampler=sampler,
                                             pruner=_pruner(pruner, base), direction="maximize", load_if_exists=True)
            differs = claim_identity(self.storage, self.storage.get_study_id_from_name(name),
                                     _identity(base, space, self.seeds),  # a key added since: its default
                                     same={"base_config": lambda held: not base.differences(held)})
        except STORAGE_ERRORS as exc:  # it opens, but cannot be written (read-only, full)
            raise ConfigError(f"cannot write the study storage: {redact(first_line(exc))}") from None
        if differs:
            raise ConfigError(f"study '{name}' was made with another {', '.join(k.replace('_', ' ') for k in differs)}:"
                              " give another --study, or the same config, settings, space, --steps and seeds")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.current: int | None = None  # the number of the trial this worker is running
        self.failed_in_a_row = 0

    def _not_ours(self, trials_here: list[str], where: str) -> ConfigError:
        """A study directory holding trials that the storage knows nothing of: another study's (made with another
        storage, or one since deleted). Its trials would resume those runs, under another config."""
        return ConfigError(f"{self.out_dir} holds {len(trials_here)} trial(s) of a study that {where} does not hold"
                           f" ({trials_here[0]}...): give another --study, the storage of that study, or move the"
                           " directory away")

    # ---------------------------------------------------------------- running trials
    def pending(self) -> bool:
        """Whether the study wants another trial: a retry waits, or fewer than `total` are counted."""
        trials = self.study.get_trials(deepcopy=False)
        return any(t.state == TrialState.WAITING for t in trials) or len(_slots(trials)) < self.total

    def run(self) -> None:
        """Run trials until the study is full, then wait while other workers' trials run (one whose worker dies
        is retried here); past the timeout, start none. A stop (Ctrl-C, SIGTERM) fails the trial in hand, queues
        its retry and raises Interrupted; a storage that fails under it raises TrainingFailed, as do
        FAILURES_IN_A_ROW failed trials."""
        try:
            try:
                self._run_trials()
            except _StudyFailing:
                raise
            except (Interrupted, KeyboardInterrupt, TrainingFailed) as exc:
                self._stopped(exc)
        except Exception as exc:
            failed = storage_failure(exc)
            if failed is None:
                raise
            with contextlib.suppress(Exception):  # where the storage still answers, the trial in hand waits
                self._retry(self.current)
            raise TrainingFailed(f"could not use the storage of study {self.name} ({redact(first_line(failed))}):"
                                 " the study stopped; run the same command again to go on once the storage works"
                                 " (a trial in hand resumes from its checkpoints)", write_failed=True) from None

    def _run_trials(self) -> None:
        started, waiting = time.monotonic(), False
        while self.timeout is None or time.monotonic() - started < self.timeout:
            optuna.storages.fail_stale_trials(self.study)
            if self.pending():
                left = None if self.timeout is None else self.timeout - (time.monotonic() - started)
                try:
                    self.study.optimize(self._objective, callbacks=[self._after], catch=(_Surplus, _Failed),
                                        timeout=left, gc_after_trial=False)
                except Exception as exc:
                    if storage_failure(exc) is not None or not self._failed_elsewhere():
                        raise
                    log.warning("trial %s was given to another worker while this one stalled (its heartbeats"
                                " stopped); that worker's retry counts, this run does not", self.current)
                    self.current = None
                continue
            running = sum(t.state == TrialState.RUNNING for t in self.study.get_trials(deepcopy=False))
            if not running:
                break
            if not waiting:
                log.info("study %s: waiting for %d trial(s) of other workers", self.name, running)
            waiting = True
            time.sleep(min(self.heartbeat, WAIT_POLL))  # soon told when the last of them ends

    def _trial_numbered(self, number: int | None) -> optuna.trial.FrozenTrial | None:
        return next((t for t in self.study.get_trials() if t.number == number), None)

    def _failed_elsewhere(self) -> bool:
        """Whether the trial in hand was failed by another worker while this one ran it (this worker stalled past
        its heartbeats, and Optuna refused to end the trial): FAIL, without the cause this worker records."""
        trial = self._trial_numbered(self.current)
        return trial is not None and trial.state == TrialState.FAIL and "failure" not in trial.user_attrs

    def _retry(self, number: int | None) -> None:
        """Queue the retry of trial `number` if it failed (a stop uses up no retry)."""
        stopped = self._trial_numbered(number)
        if stopped is not None and stopped.state == TrialState.FAIL:
            Retry(max_retry=None)(self.study, stopped)

    def _stopped(self, exc: BaseException) -> None:
        self._retry(self.current)
        during = "between trials" if self.current is None else f"during trial {self.current}, which is retried"
        if isinstance(exc, TrainingFailed):  # a failed write (a full disk): its message stays first
            raise TrainingFailed(redact(f"{exc}; study {self.name} stopped {during} when it runs again"),
                                 write_failed=exc.write_failed) from None
        signum = getattr(exc, "signum", signal.SIGINT)  # an Interrupted's, a Terminated's, or a Ctrl-C's
        raise Interrupted(signum, f"study {self.name} stopped {during}: run the same command again to go on"
                                  " (a stopped trial resumes from its checkpoints)") from None

    def run_as_worker(self) -> None:
        """run(), in a worker process of run_workers: the failure that ends it is left for the command that started
        it, which tells it once for all its workers (they would each tell the same lost storage)."""
        try:
            self.run()
        except Interrupted as exc:  # the command stopped its workers, and says so once
            if os.environ.get(WORKER_ERRORS_ENV) is None:
                raise
            raise SystemExit(128 + exc.signum) from None
        except TrainingFailed as exc:
            errors = os.environ.get(WORKER_ERRORS_ENV)
            if errors is None:
                raise
            Path(errors, f"{os.getpid()}.txt").write_text(redact(str(exc)))
            if exc.write_failed:  # orbax's threads may wait on a failed write for minutes, which exit would join
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(1)
            raise SystemExit(1) from None

    def run_workers(self, argv: list[str], jobs: int) -> None:
        """Run trials in `jobs` worker processes of this command (`argv`: its arguments) at once until the study is
        full; a Ctrl-C or SIGTERM reaches each once, and each stops as run() does. The storage URL reaches them in
        their environment, never on their command line, which every user can read."""
        command = worker_command(argv)
        if self.url and any(self.url in token for token in command):
            raise ConfigError("--storage: give it once, as --storage URL, so that the workers' command lines can"
                              " leave it out")
        children, saved = Children(), {key: os.environ.pop(key, None) for key in (STORAGE_ENV, WORKER_ERRORS_ENV)}
        try:
            with tempfile.TemporaryDirectory(prefix="jaxrl_lander-workers-") as errors:
                os.environ.update({WORKER_ERRORS_ENV: errors, **({STORAGE_ENV: self.url} if self.url else {})})
                with children, ThreadPoolExecutor(max_workers=jobs) as pool:
                    codes = list(pool.map(lambda _: children.run(command, capture=False)[0], range(jobs)))
                told = sorted({p.read_text() for p in Path(errors).iterdir()})
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None)
                if value is not None:
                    os.environ[key] = value
        if children.signum is not None:
            raise Interrupted(children.signum, f"study {self.name} stopped by {signal.Signals(children.signum).name};"
                                               " the trials in hand are retried from their checkpoints: run the"
                                               " same command again")
        killed = [signal.Signals(-code).name for code in codes if code < 0]
        if killed:
            who = "a worker" if len(killed) == 1 else f"{len(killed)} workers"
            what = f"{who} of study {self.name} {'was' if len(killed) == 1 else 'were'} killed by {', '.join(killed)}"
            after = self._after_kill()
            if after is None:  # the others retried its trial and ended the study: nothing is lost
                log.warning("%s; the other workers retried its trial, and the study is full", what)
            else:
                raise TrainingFailed(f"{what}; {after}")
        if told:  # the workers' own lines, each told once
            raise TrainingFailed(" | ".join(told))
        if max(codes) > 0:
            raise TrainingFailed(f"a worker of study {self.name} exited with status {max(codes)} (its error is above)")

    def _after_kill(self) -> str | None:
        """What becomes of a killed worker's trial: None when the others retried it and the study is full."""
        with contextlib.suppress(*STORAGE_ERRORS):
            if not self.pending() and not any(t.state == TrialState.RUNNING for t in self.study.get_trials()):
                return None
        return "its trial is retried from its checkpoints when the study runs again"

    def _objective(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        try:
            return self._train_trial(trial)
        except (optuna.TrialPruned, _Surplus, _Failed):
            raise
        except BaseException as exc:  # the trial FAILs: its cause stays with it, unless the storage is what failed
            if storage_failure(exc) is None:
                with contextlib.suppress(*STORAGE_ERRORS, optuna.exceptions.UpdateFinishedTrialError):
                    trial.set_user_attr("failure", redact(first_line(exc)))
            raise

    def _train_trial(self, trial: optuna.Trial) -> float:
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
            trial.set_user_attr("refused", redact(str(exc)))
            raise optuna.TrialPruned(f"refused: {exc}") from None
        directory = self.out_dir / f"trial_{trial.number if retry_of is None else retry_of:04d}"
        configs = [make_config(config.algo, {**config.to_dict(), "seed": seed}) for seed in self.seeds]
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("experiments", [str(ExperimentPaths.of(directory, c).root) for c in configs])
        watch = None if unprunable(config) else Pruning(trial)  # scored by the final evaluation: nothing to judge
        try:  # several seeds train as vectorised agents, one per seed
            runs = train_agents(configs, [directory] * len(configs), progress_bar=False, watch=watch)
        except (ExperimentInUse, ResumeError) as exc:
            trial.set_user_attr("failure", redact(str(exc)))
            if isinstance(exc, ExperimentInUse) and retry_of is not None:  # its first worker stalled, not died:
                trial.set_user_attr("requeue", True)  # try again a heartbeat later, until that run is done
                time.sleep(self.heartbeat)
            raise _Failed(str(exc)) from None
        if watch is not None and watch.storage_error is not None:
            raise watch.storage_error
        failed = next((r for r in runs if isinstance(r, Exception)), None)
        if failed is not None and failed.write_failed:  # a full disk: the worker stops, the trial waits
            raise failed
        if failed is not None:  # diverged: as bad as pruned, and counted
            trial.set_user_attr("failure", redact(str(failed)))
            raise optuna.TrialPruned(f"training failed: {failed}")
        stopped = next((r for r in runs if r.status == "interrupted"), None)
        if stopped is not None:
            if stopped.stop == "watch":
                raise optuna.TrialPruned(stopped.reason)
            raise Interrupted(signal.Signals[stopped.stop], stopped.reason)
        values = [_score(config, r) for r in runs]
        value = float(iqm(np.array(values)))
        if not np.isfinite(value):
            trial.set_user_attr("failure", f"the objective is not finite ({value}) over {values}")
            raise _Failed(trial.user_attrs["failure"])
        trial.set_user_attr("final_evaluation", float(np.mean([r.evaluation["mean"] for r in runs])))
        if len(runs) > 1:
            trial.set_user_attr("seed_values", values)
        return value

    def _after(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.current = None
        requeued = trial.state == TrialState.FAIL and trial.user_attrs.get("requeue")
        if requeued:
            Retry(max_retry=None)(study, trial)
        if trial.state == TrialState.COMPLETE:
            log.info("trial %d: objective %.1f, final evaluation %.1f | %s", trial.number, trial.value,
                     trial.user_attrs["final_evaluation"], params_text(trial.params))
        elif trial.state == TrialState.PRUNED:
            reason = (trial.user_attrs.get("refused") or trial.user_attrs.get("failure")
                      or f"pruned at step {trial.last_step}")
            log.info("trial %d: %s | %s", trial.number, reason, params_text(trial.params))
        elif "surplus" not in trial.user_attrs:
            reason = trial.user_attrs.get("failure", "no cause recorded")
            log.warning("trial %d failed: %s", trial.number, reason)
            self.failed_in_a_row += not requeued  # a retry that waits for a stalled worker is no failure
            if self.failed_in_a_row >= FAILURES_IN_A_ROW:
                raise _StudyFailing(f"study {self.name} stopped: {self.failed_in_a_row} trials in a row failed, the"
                                    f" last ({trial.number}) because {reason}")
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.failed_in_a_row = 0
        if not self.pending():
            study.stop()
        with contextlib.suppress(OSError):  # the report is refreshed after each trial; the last write matters
            self.report()

    # ---------------------------------------------------------------- the report
    def report(self, plots: bool = False) -> dict[str, Any]:
        """study.json, best.toml and, with `plots`, the PNGs (tune_report.py); what study.json holds."""
        trials = self.study.get_trials()
        if plots:
            log.info("writing the report of study %s: study.json, best.toml, PNGs", self.name)
        header = {"study": self.name, "storage": self.where, "direction": "maximize", "objective": OBJECTIVE,
                  "trials_total": self.total, "trials_counted": len(_slots(trials)), "seeds": self.seeds,
                  "search_space": self.space.ranges, "base_config": self.base.to_dict()}
        return write_report(self.study, trials, header, self.out_dir, plots)
