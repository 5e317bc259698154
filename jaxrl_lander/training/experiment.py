"""One experiment on disk: open it (afresh, or resumed from its latest checkpoint), run the training loop with
its checkpoints and evaluations, and finish it (model, final evaluation, metrics and results JSON)."""

import contextlib
import dataclasses
import logging
import shutil
import signal
from pathlib import Path
from typing import Any

import jax

from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.core.algos.base import TrainState
from jaxrl_lander.storage.checkpoint import CheckpointStore, ModelSpec, model_spec, recover_model, save_model
from jaxrl_lander.storage.claim import (RESUMABLE_CHANGES, ExperimentLock, Overwrite, check_rerun, check_resumable,
                                 check_starting_afresh, holds_experiment, recover_interrupted_overwrite)
from jaxrl_lander.training.collect import HostCollector
from jaxrl_lander.training.compiled import CompiledCollector
from jaxrl_lander.config import RunConfig
from jaxrl_lander.envs import check_envs
from jaxrl_lander.envs.gymnasium import make_vector_env
from jaxrl_lander.config.errors import ConfigError, Interrupted, ResumeError, TrainingFailed, WriteFailed, first_line
from jaxrl_lander.training.evaluate import Policy, brief, evaluate
from jaxrl_lander.storage.files import (ExperimentPaths, check_results_dir, check_writable, remove_partial_writes,
                                 write_json_atomic)
from jaxrl_lander.training.loop import LoopResult, Progress, train_loop
from jaxrl_lander.outputs import Outputs, Watch
from jaxrl_lander.outputs.console import run_sinks
from jaxrl_lander.storage.metrics import MetricsRecorder, now_iso
from jaxrl_lander.outputs.plotting import plot_learning_curve
from jaxrl_lander.storage.results import Results, build_results, previous_results
from jaxrl_lander.training.runtime import CompileClock, Devices, StopOnSignal, enable_compilation_cache, package_versions
from jaxrl_lander.training.seeding import EvalSeeds, RunKeys, train_env_seed
from jaxrl_lander.training.selection import Delivery, select_checkpoint
from jaxrl_lander.training.starting_point import StartingPoint, load_starting_point

log = logging.getLogger("jaxrl_lander")

def train(config: RunConfig, results_dir: str | Path = "results", *, resume: bool = False, overwrite: bool = False,
          device: str = "auto", act_device: str = "auto", tensorboard: bool = False,
          progress_bar: bool | None = None, watch: Watch | None = None, init_from: str | Path | None = None,
          claim: ExperimentLock | None = None) -> Results:
    """Train `config` into results_dir/experiments/{algo}_seed{seed}/, as `python -m jaxrl_lander train` does.

    An existing experiment of the same algorithm and seed is continued from its latest complete checkpoint with
    `resume` (a finished run's results are returned untouched), replaced with `overwrite` (once the new run has
    committed its first checkpoint; until then the old one stays whole), and otherwise refused. `device` runs the
    update, `act_device` the per-step action sampling (auto: JAX's default device, and the host CPU).
    `progress_bar` (default: when stderr is a terminal) replaces the progress log lines; `tensorboard` adds event
    files. A `watch` sees the run's events and may stop it early (its verdict is then the results' reason).
    `init_from` (a model or experiment directory) starts a new experiment from the parameters and normaliser
    statistics another one delivered, with a fresh optimiser (recorded in the results as initialized_from).
    `claim` is the experiment's lock when the caller holds it already, for longer than this run (`reproduce`).
    Raises ConfigError, ResumeError or ExperimentInUse (another process is writing the experiment), with
    nothing written, when the run is refused, and TrainingFailed after writing the results of a run stopped by a
    numerical fault.
    """
    paths = ExperimentPaths.of(results_dir, config.algo, config.seed)
    if init_from is not None and resume:
        raise ConfigError("--init-from starts a new experiment and --resume continues one: give one of them")
    check_rerun(paths, resume, overwrite)
    done = previous_results(paths) if resume else None
    if done and done.status == "completed" and done.total_timesteps >= config.total_timesteps:
        if _whole(config, paths, done):
            return done
        config = dataclasses.replace(config, total_timesteps=done.total_timesteps)  # delivered again, below
    check_results_dir(results_dir)
    check_writable(paths.root, f"experiment {paths.root}")
    dims = check_envs(config)
    start = load_starting_point(init_from, config, *dims) if init_from is not None else None
    if start is not None and Path(start.record["model"]).resolve().parent == paths.root.resolve():
        raise ConfigError(f"--init-from {start.record['model']}: that is the model of the experiment this run"
                          " would write")
    if tensorboard:
        from jaxrl_lander.outputs.tensorboard import require_tensorboard

        require_tensorboard()
    devices = Devices.resolve(device, act_device)
    if claim is not None and not (claim.held and claim.paths.root.absolute() == paths.root.absolute()):
        raise ValueError(f"claim is not a held lock of {paths.root}")
    with contextlib.nullcontext() if claim else ExperimentLock(paths):
        recover_interrupted_overwrite(paths)
        recover_model(paths.model)
        check_rerun(paths, resume, overwrite)  # again: a run that held the lock until now may have made it
        replace = Overwrite(paths) if overwrite and holds_experiment(paths) else None
        enable_compilation_cache()
        with jax.default_device(devices.update):
            experiment = Experiment(config, paths, devices, replace, start=start)
            try:
                state, progress = experiment.open(resume)
            except BaseException:
                experiment.collector.close()
                raise
            sinks = run_sinks(config.total_timesteps, progress.timestep,
                              experiment.paths.tensorboard if tensorboard else None, progress_bar)
            outputs = Outputs(experiment.recorder, sinks + ([watch.sink(0)] if watch else []), loss=progress.loss)
            if watch:
                watch.resumed(0, progress.evaluations)
            return experiment.run(state, progress, outputs, watch)


def _whole(config: RunConfig, paths: ExperimentPaths, done: Results) -> bool:
    """Whether a finished run that `config` resumes is whole, so that there is nothing to do; ConfigError when the
    config differs from the run's beyond what a resume may change. Its learning-curve PNG, if missing (a kill
    between its results and its plot), is drawn again; a model missing, or not the one its results name (a kill
    while it finished), is not whole: the run delivers it again from its last checkpoint."""
    differing = config.differences(done.hyperparameters, ignore=RESUMABLE_CHANGES)
    if differing:
        raise ConfigError(f"cannot resume {paths.root}: config differs from the finished run's in"
                          f" {', '.join(differing)}")
    delivered = (done.selected_checkpoint or {}).get("timestep", done.timestep)
    spec = model_spec(paths.model) if paths.model.is_dir() else None
    if spec is None or spec.timestep != delivered:
        log.info("%s finished %d steps, but its model is %s: delivering it again from its last checkpoint",
                 paths.name, done.total_timesteps, "missing" if spec is None else f"of step {spec.timestep}, not"
                 f" {delivered} as its results say")
        return False
    if not paths.learning_curve.exists():
        plot_learning_curve(paths.root)
    log.info("%s already finished %d steps; nothing to do", paths.name, done.total_timesteps)
    return True


class Experiment:
    """One run of one experiment directory: the loop's checkpoint and evaluation hooks, and its finish."""

    def __init__(self, config: RunConfig, paths: ExperimentPaths, devices: Devices, replace: Overwrite | None = None,
                 collector=None, start: StartingPoint | None = None):
        self.config, self.devices, self.replace, self.start = config, devices, replace, start
        self.initialized_from = start.record if start else None  # recorded in every checkpoint and the results
        self.paths = replace.staged if replace else paths  # an overwrite writes aside until its first checkpoint
        self.keys, self.seeds = RunKeys.from_seed(config.seed), EvalSeeds.of(config)
        self.learner = make_learner(config, *check_envs(config))
        if collector is not None:  # one agent's view of vectorised agents' collector
            self.collector = collector
        elif config.env_backend == "envpool":
            self.collector = CompiledCollector(config, self.learner, devices)
        else:
            self.collector = HostCollector(make_vector_env(config.env_id, config.num_envs), self.learner.network,
                                           config, devices)
        self.recorder: MetricsRecorder | None = None
        self.write_failed = False  # a file of the run could not be written (a full disk): --resume goes on later
        self.pending: tuple[dict, int] | None = None  # a resumed checkpoint's partly collected rollout
        self.store: CheckpointStore | None = None

    # ---------------------------------------------------------------- open
    def open(self, resume: bool) -> tuple[TrainState, Progress]:
        """Resume from the latest complete checkpoint when asked and one exists, else start afresh."""
        if resume and self.paths.checkpoints.is_dir():
            self.store = CheckpointStore(self.paths.checkpoints, keep=self.config.keep_checkpoints)
            try:
                if self.store.latest_step() is not None:
                    return self._resume()
            except BaseException:
                self.store.close()
                raise
            self.store.close()
        if not self.replace:  # an overwrite's staging directory holds nothing of value
            check_starting_afresh(self.paths)
        if resume:
            log.info("no checkpoint to resume from in %s; starting afresh", self.paths.root)
        if self.paths.root.exists():  # what a run killed or failed before its first checkpoint left, or a
            shutil.rmtree(self.paths.root)  # staging directory: nothing committed is lost
        config = self.config
        self.recorder = MetricsRecorder(self.paths.name, config.algo, config.env_id, config.seed,
                                        config.recording_interval)
        self.store = CheckpointStore(self.paths.checkpoints, keep=config.keep_checkpoints)
        state = self.learner.init(self.keys.state)
        if self.start:
            state = state.replace(params=self.start.params, opt_state=self.learner.tx.init(self.start.params))
            if self.collector.normalizer is not None:
                self.collector.normalizer.start_from(self.start.observations, self.start.returns)
        return state, Progress()

    def _resume(self) -> tuple[TrainState, Progress]:
        """State, metrics and counters of the latest checkpoint; raises before anything is written."""
        step = self.store.latest_step()
        try:
            meta = self.store.run_metadata(step)
            # The config first: a state of another shape (hidden_size, optimizer) is not an unreadable one.
            check_resumable(self.config, meta["config"], step, self.paths.root)
            state, _, rollout = self.store.restore_run(step, self.learner.init(self.keys.state),
                                                       self.collector.pending(step)[0])
        except ConfigError:
            raise
        except Exception as exc:  # orbax and tensorstore raise many kinds; any of them means unreadable
            raise ResumeError(f"checkpoint {self.store.directory / str(step)} is unreadable ({first_line(exc)}); "
                              "delete that directory to resume from the checkpoint before it") from None
        source = self.paths.metrics_journal if self.paths.metrics_journal.is_file() else self.paths.metrics
        try:
            self.recorder = MetricsRecorder.load(source, until=step)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"metrics file {source} is unreadable ({first_line(exc)}); --overwrite starts the"
                              " experiment afresh") from None
        self.recorder.continue_journal(self.paths.metrics_journal, step)
        removed = remove_partial_writes(self.paths)
        if removed:
            log.info("removed %d partial write(s) left by a killed run: %s", len(removed), ", ".join(removed))
        log.info("resuming %s from the checkpoint at step %d", self.paths.name, step)
        self.initialized_from = meta.get("initialized_from")
        if self.collector.normalizer is not None:
            self.collector.normalizer.load_state_dict(meta["normalizer"])
        if rollout is not None:  # a checkpoint written before rollouts were kept resumes at a rollout's start
            self.pending = rollout, meta["rollout_filled"]
        return state, Progress(timestep=meta["timestep"], updates=meta["updates"], wall_time=meta["wall_time"],
                               loss=meta["loss"], evaluations=meta["evaluations"])

    # ---------------------------------------------------------------- the loop's hooks
    def policy(self, params) -> Policy:
        """The policy of `params` with the observation statistics as they stand (a copy)."""
        normalizer = self.collector.normalizer
        return Policy(self.learner.network, params, normalizer.observation_spec() if normalizer else None)

    def evaluate(self, params) -> list[dict[str, Any]]:
        config = self.config
        return [brief(evaluate(self.policy(params), config.env_id, config.eval_interval_episodes,
                               self.seeds.during_training))]

    def checkpoint(self, state: TrainState, progress: list[Progress], training_seconds: float) -> None:
        for agent in progress:
            self.save(state, agent, training_seconds)

    def save(self, state: TrainState, progress: Progress, training_seconds: float) -> None:
        """Metrics first, so that they always reach at least the latest checkpoint; then the orbax checkpoint."""
        self.recorder.append_journal(self.paths.metrics_journal, progress.timestep)
        normalizer = self.collector.normalizer
        rollout, filled = self.collector.pending(progress.timestep)
        self.store.save(progress.timestep, state, {
            "timestep": progress.timestep,
            "updates": progress.updates,
            "episodes": len(self.recorder.episodes),
            "recent_reward_mean": self.recorder.recent_reward_mean,
            "loss": progress.loss,
            "wall_time": training_seconds,
            "evaluations": progress.evaluations,
            "saved_at": now_iso(),
            "config": self.config.to_dict(),
            "normalizer": normalizer.state_dict() if normalizer else None,
            "rollout_filled": filled,  # vector steps of the rollout in progress, saved with the state
            "initialized_from": self.initialized_from,
        }, rollout)
        if self.replace:
            self._take_place()

    def _take_place(self) -> None:
        """An overwrite's first checkpoint is committed: swap the staged run in for the old experiment."""
        self.store.close()  # waits for the checkpoint to be committed
        self.paths, self.replace = self.replace.commit(), None
        self.store = CheckpointStore(self.paths.checkpoints, keep=self.config.keep_checkpoints)
        log.info("replaced the previous experiment at %s", self.paths.root)

    # ---------------------------------------------------------------- run and finish
    def run(self, state: TrainState, progress: Progress, outputs: Outputs, watch: Watch | None = None) -> Results:
        started = (now_iso(), progress.timestep, CompileClock())
        state = jax.device_put(state, self.devices.update)  # committed, as every update's output: one signature
        self.collector.start(state, train_env_seed(self.keys.env, progress.timestep))
        if self.pending:
            self.collector.resume_pending(*self.pending)
        with StopOnSignal() as stop:
            result = train_loop(self.config, self.learner, self.collector, state, [progress], [outputs], self,
                                lambda: stop() or (watch is not None and watch.verdict is not None))
        halted = watch.verdict if watch and progress.timestep < self.config.total_timesteps else None
        return self.finish(result.state, result, progress, outputs, stop.signum, started, halted=halted)

    def finish(self, state: TrainState, result: LoopResult, progress: Progress, outputs: Outputs,
               signum: int | None, started: tuple, agent: int = 0, evaluation: dict | None = None,
               halted: str | None = None) -> Results:
        """The end of a run: a stop checkpoint, the model, the final evaluation, metrics and results JSON.
        `state` is this experiment's: agent number `agent` of the loop's; `started`: (start time, start step,
        compile clock); `evaluation`: the final evaluation of the last parameters, when already played;
        `halted`: why a watch stopped the run (it ends as a stopped one)."""
        start_time, start_step, compile_clock = started
        failure = result.agent_failures[agent] or result.failure
        status, reason = ("failed", failure) if failure else ("completed", None)
        if (signum is not None or halted) and not failure:
            status = "interrupted"
            reason = halted if signum is None else f"stopped by {signal.Signals(signum).name} at step {progress.timestep}"
        if self.replace:  # an overwrite stopped or failed before its first checkpoint: the old experiment stays
            self._failed_write(status, reason, self.store.close, "the last checkpoint")
            self.collector.close()
            self.replace.discard()
            message = (f"{reason}, before the overwrite's first checkpoint; the previous experiment at"
                       f" {self.replace.final.root} is kept as it was")
            if signum is not None and not failure:
                raise Interrupted(signum, message)
            raise TrainingFailed(message, write_failed=result.write_failed)
        if status == "interrupted" and result.last_checkpoint != progress.timestep:
            status, reason = self._failed_write(status, reason, lambda: self.save(
                state, progress, progress.wall_time + result.clock.seconds()), f"the checkpoint at {progress.timestep}")
        # the last checkpoint's write is training time, as every other's
        status, reason = self._failed_write(status, reason, self.store.wait, "the last checkpoint")
        loop_seconds = result.clock.seconds()  # before the selection's evaluations, which are not
        compile_seconds = compile_clock.seconds()
        delivery = self._deliver(state, progress, status)
        self._failed_write(status, reason, self.store.close, "the last checkpoint")
        self.collector.close()
        if status != "failed":
            status, reason = self._failed_write(status, reason, lambda: self._save_model(delivery), "the model")
        if status == "interrupted":  # a failure's reason is the error the run ends with; a watch's verdict is news
            (log.info if halted and signum is None else log.warning)("%s: %s", self.paths.name, reason)
        if status != "completed":
            evaluation = None
        else:
            if delivery.evaluation:  # played by the selection
                evaluation = delivery.evaluation
            elif delivery.step != progress.timestep or evaluation is None:
                log.info("%s: final evaluation, %d episodes", self.paths.name, self.config.eval_episodes)
                evaluation = evaluate(delivery.policy, self.config.env_id, self.config.eval_episodes,
                                      self.seeds.final, timed=True)
            outputs.evaluation(progress.timestep, evaluation, final=True)
        outputs.close(progress.timestep)
        status, reason = self._failed_write(status, reason, lambda: self.recorder.save(self.paths.metrics),
                                            self.paths.metrics.name)
        results = build_results(
            self.config, self.paths, self.recorder, self.store.all_steps(), evaluation, progress.evaluations,
            status=status, reason=reason, timestep=progress.timestep, updates=progress.updates,
            start_time=start_time, end_time=now_iso(), training_time_seconds=progress.wall_time + loop_seconds,
            steps_per_second=(progress.timestep - start_step) / loop_seconds if loop_seconds > 0 else None,
            first_update_seconds=result.first_update_seconds, compile_seconds=compile_seconds,
            resumed_from_timestep=start_step or None, selected_checkpoint=delivery.selected,
            initialized_from=self.initialized_from,
            package_versions=package_versions(), device=self.devices.describe())
        status, reason = self._failed_write(status, reason, lambda: write_json_atomic(self.paths.results,
                                                                                       results.to_dict()),
                                            self.paths.results.name)
        if status == "failed":
            raise TrainingFailed(f"{reason}; the last good checkpoint is kept in {self.paths.checkpoints}",
                                 write_failed=result.write_failed or self.write_failed)
        plot_learning_curve(self.paths.root)
        return results

    def _failed_write(self, status: str, reason: str | None, write, what: str) -> tuple[str, str | None]:
        """Call `write`, which writes `what`; when it fails on the file system (a full disk, a vanished directory)
        the run has failed for that reason, unless it had already failed for another."""
        try:
            write()
        except WriteFailed as exc:
            failure = str(exc)
        except OSError as exc:
            failure = f"could not write {what} in {self.paths.root} ({exc.strerror or exc})"
        else:
            return status, reason
        self.write_failed = True
        return ("failed", reason) if status == "failed" else ("failed", failure)

    def _deliver(self, state: TrainState, progress: Progress, status: str) -> Delivery:
        last = Delivery(progress.timestep, self.policy(state.params))
        if status != "completed" or not self.config.select_best_checkpoint or not progress.evaluations:
            return last
        return select_checkpoint(self.config, self.store, state, last.policy, progress.timestep,
                                 progress.evaluations, self.paths.name)

    def _save_model(self, delivery: Delivery) -> None:
        network = self.learner.network
        save_model(self.paths.model, delivery.policy.params, ModelSpec(
            algo=self.config.algo, env_id=self.config.env_id, seed=self.config.seed, timestep=delivery.step,
            obs_dim=self.learner.obs_dim, num_actions=network.num_actions, hidden_size=network.hidden_size,
            first_eval_seed=self.seeds.final, observation_normalization=delivery.policy.observation_stats))
