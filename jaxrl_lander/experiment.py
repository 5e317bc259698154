"""One experiment on disk: open it (afresh, or resumed from its latest checkpoint), run the training loop with
its checkpoints and evaluations, and finish it (model, final evaluation, metrics and results JSON)."""

import logging
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import jax

from jaxrl_lander.algos import make_learner
from jaxrl_lander.algos.base import TrainState
from jaxrl_lander.checkpoint import CheckpointStore, ModelSpec, save_model
from jaxrl_lander.collect import HostCollector, env_dims
from jaxrl_lander.config import RunConfig
from jaxrl_lander.envs.gymnasium import make_vector_env
from jaxrl_lander.errors import ConfigError, ResumeError, TrainingFailed, first_line
from jaxrl_lander.evaluate import Policy, brief, evaluate
from jaxrl_lander.files import ExperimentPaths, check_writable, remove_partial_writes, write_json_atomic
from jaxrl_lander.loop import LoopResult, Progress, train_loop
from jaxrl_lander.outputs import Outputs, Sink
from jaxrl_lander.outputs.console import LogLines, ProgressBar
from jaxrl_lander.outputs.metrics import MetricsRecorder, now_iso
from jaxrl_lander.results import Results, build_results
from jaxrl_lander.runtime import CompileClock, Devices, StopOnSignal, enable_compilation_cache, package_versions
from jaxrl_lander.seeding import EvalSeeds, RunKeys, train_env_seed
from jaxrl_lander.selection import Delivery, select_checkpoint

log = logging.getLogger("jaxrl_lander")

# Config keys that may differ between a checkpoint and the run resuming from it.
RESUMABLE_CHANGES = {
    "total_timesteps", "eval_episodes", "eval_interval", "eval_interval_episodes", "keep_checkpoints",
    "selection_candidates", "selection_episodes",  # how a completed run chooses among its kept checkpoints
}


def train(config: RunConfig, results_dir: str | Path = "results", *, resume: bool = False, device: str = "auto",
          act_device: str = "auto", tensorboard: bool = False, progress_bar: bool | None = None) -> Results:
    """Train `config` into results_dir/experiments/{algo}_seed{seed}/, as `python -m jaxrl_lander train` does.

    A run without `resume` replaces an earlier experiment of the same algorithm and seed; with it, continues
    from the latest complete checkpoint (and returns a finished run's results untouched). `device` runs the
    update, `act_device` the per-step action sampling (auto: JAX's default device, and the host CPU).
    `progress_bar` (default: when stderr is a terminal) replaces the progress log lines; `tensorboard` adds event
    files. Raises ConfigError or ResumeError, with nothing written, when the run is refused, and TrainingFailed
    after writing the results of a run stopped by a numerical fault.
    """
    paths = ExperimentPaths.of(results_dir, config.algo, config.seed)
    done = _previous_results(paths) if resume else None
    if done and done.status == "completed" and done.total_timesteps >= config.total_timesteps:
        log.info("%s already finished %d steps; nothing to do", paths.name, done.total_timesteps)
        return done
    check_writable(results_dir)
    if tensorboard:
        from jaxrl_lander.outputs.tensorboard import require_tensorboard

        require_tensorboard()
    enable_compilation_cache()
    devices = Devices.resolve(device, act_device)
    with jax.default_device(devices.update):
        experiment = Experiment(config, paths, devices)
        try:
            state, progress = experiment.open(resume)
        except BaseException:
            experiment.collector.close()
            raise
        outputs = Outputs(experiment.recorder, _sinks(config, paths, progress.timestep, tensorboard, progress_bar),
                          loss=progress.loss)
        return experiment.run(state, progress, outputs)


def _sinks(config: RunConfig, paths: ExperimentPaths, start: int, tensorboard: bool,
           progress_bar: bool | None) -> list[Sink]:
    bar = sys.stderr.isatty() if progress_bar is None else progress_bar
    sinks: list[Sink] = [ProgressBar(config.total_timesteps, start)] if bar else []
    sinks.append(LogLines(config.total_timesteps, start, progress_lines=not bar))
    if tensorboard:
        from jaxrl_lander.outputs.tensorboard import TensorBoardLog

        sinks.append(TensorBoardLog(paths.tensorboard, start))
    return sinks


def _previous_results(paths: ExperimentPaths) -> Results | None:
    if not paths.results.is_file():
        return None
    try:
        return Results.load(paths.results)
    except (OSError, ValueError, TypeError) as exc:
        raise ResumeError(f"results file {paths.results} is unreadable ({first_line(exc)})") from None


class Experiment:
    """One run of one experiment directory: the loop's checkpoint and evaluation hooks, and its finish."""

    def __init__(self, config: RunConfig, paths: ExperimentPaths, devices: Devices):
        self.config, self.paths, self.devices = config, paths, devices
        self.keys, self.seeds = RunKeys.from_seed(config.seed), EvalSeeds.of(config)
        envs = make_vector_env(config.env_id, config.num_envs)
        self.learner = make_learner(config, *env_dims(envs))
        self.collector = HostCollector(envs, self.learner.network, config, devices)
        self.recorder: MetricsRecorder | None = None
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
        if resume:
            log.info("no checkpoint to resume from in %s; starting afresh", self.paths.root)
        if self.paths.root.exists():
            log.info("replacing the previous experiment at %s", self.paths.root)
            shutil.rmtree(self.paths.root)
        config = self.config
        self.recorder = MetricsRecorder(self.paths.name, config.algo, config.env_id, config.seed,
                                        config.recording_interval)
        self.store = CheckpointStore(self.paths.checkpoints, keep=config.keep_checkpoints)
        return self.learner.init(self.keys.state), Progress()

    def _resume(self) -> tuple[TrainState, Progress]:
        """State, metrics and counters of the latest checkpoint; raises before anything is written."""
        step = self.store.latest_step()
        try:
            # The config first: a state of another shape (hidden_size, optimizer) is not an unreadable one.
            self._check_resumable(self.store.metadata(step)["config"])
            state, meta = self.store.restore(step, self.learner.init(self.keys.state))
        except ConfigError:
            raise
        except Exception as exc:  # orbax and tensorstore raise many kinds; any of them means unreadable
            raise ResumeError(f"checkpoint {self.store.directory / str(step)} is unreadable ({first_line(exc)}); "
                              "delete that directory to resume from the checkpoint before it") from None
        try:
            self.recorder = MetricsRecorder.load(self.paths.metrics)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"metrics file {self.paths.metrics} is unreadable ({first_line(exc)}); train without"
                              " --resume to start afresh") from None
        self.recorder.truncate(step)
        removed = remove_partial_writes(self.paths)
        if removed:
            log.info("removed %d partial write(s) left by a killed run: %s", len(removed), ", ".join(removed))
        log.info("resuming %s from the checkpoint at step %d", self.paths.name, step)
        if self.collector.normalizer is not None:
            self.collector.normalizer.load_state_dict(meta["normalizer"])
        return state, Progress(timestep=meta["timestep"], updates=meta["updates"], wall_time=meta["wall_time"],
                               loss=meta["loss"], evaluations=meta["evaluations"])

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        current = self.config.to_dict()
        differing = sorted(k for k in set(saved) | set(current)
                           if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
        if differing:
            raise ConfigError(f"cannot resume {self.paths.root}: config differs from the checkpoint in"
                              f" {', '.join(differing)}")

    # ---------------------------------------------------------------- the loop's hooks
    def policy(self, params) -> Policy:
        """The policy of `params` with the observation statistics as they stand (a copy)."""
        normalizer = self.collector.normalizer
        return Policy(self.learner.network, params, normalizer.observation_spec() if normalizer else None)

    def evaluate(self, params) -> dict[str, Any]:
        config = self.config
        return brief(evaluate(self.policy(params), config.env_id, config.eval_interval_episodes,
                              self.seeds.during_training))

    def checkpoint(self, state: TrainState, progress: Progress, training_seconds: float) -> None:
        """Metrics first, so that they always reach at least the latest checkpoint; then the orbax checkpoint."""
        self.recorder.save(self.paths.metrics)
        normalizer = self.collector.normalizer
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
        })

    # ---------------------------------------------------------------- run and finish
    def run(self, state: TrainState, progress: Progress, outputs: Outputs) -> Results:
        start_time, start_step, compile_clock = now_iso(), progress.timestep, CompileClock()
        self.collector.start(state, train_env_seed(self.keys.env, progress.timestep))
        with StopOnSignal() as stop:
            result = train_loop(self.config, self.learner, self.collector, state, progress, outputs, self, stop)
        status, reason = "completed", None
        if result.failure:
            status, reason = "failed", result.failure
        elif stop.signum is not None:
            status = "interrupted"
            reason = f"stopped by {signal.Signals(stop.signum).name} at step {progress.timestep}"
            if result.last_checkpoint != progress.timestep:
                self.checkpoint(result.state, progress, progress.wall_time + result.clock.seconds())
        self.store.wait()  # the last checkpoint's write is training time, as every other's
        loop_seconds = result.clock.seconds()  # before the selection's evaluations, which are not
        compile_seconds = compile_clock.seconds()
        delivery = self._deliver(result, progress, status)
        self.store.close()
        self.collector.close()
        if reason:
            log.warning("%s: %s", self.paths.name, reason)
        evaluation = None
        if status != "failed":
            self._save_model(delivery)
        if status == "completed":
            evaluation = delivery.evaluation or evaluate(delivery.policy, self.config.env_id,
                                                         self.config.eval_episodes, self.seeds.final, timed=True)
            outputs.evaluation(progress.timestep, evaluation)
        outputs.close(progress.timestep)
        self.recorder.save(self.paths.metrics)
        results = build_results(
            self.config, self.paths, self.recorder, self.store.all_steps(), evaluation, progress.evaluations,
            status=status, reason=reason, timestep=progress.timestep, updates=progress.updates,
            start_time=start_time, end_time=now_iso(), training_time_seconds=progress.wall_time + loop_seconds,
            steps_per_second=(progress.timestep - start_step) / loop_seconds if loop_seconds > 0 else None,
            first_update_seconds=result.first_update_seconds, compile_seconds=compile_seconds,
            resumed_from_timestep=start_step or None, selected_checkpoint=delivery.selected,
            package_versions=package_versions(), device=self.devices.describe())
        write_json_atomic(self.paths.results, results.to_dict())
        if status == "failed":
            raise TrainingFailed(f"{reason}; the last good checkpoint is kept in {self.paths.checkpoints}")
        _plot_quietly(self.paths.root)
        return results

    def _deliver(self, result: LoopResult, progress: Progress, status: str) -> Delivery:
        last = Delivery(progress.timestep, self.policy(result.state.params))
        if status != "completed" or not self.config.select_best_checkpoint or not progress.evaluations:
            return last
        return select_checkpoint(self.config, self.store, result.state, last.policy, progress.timestep,
                                 progress.evaluations, self.paths.name)

    def _save_model(self, delivery: Delivery) -> None:
        network = self.learner.network
        save_model(self.paths.model, delivery.policy.params, ModelSpec(
            algo=self.config.algo, env_id=self.config.env_id, seed=self.config.seed, timestep=delivery.step,
            obs_dim=self.learner.obs_dim, num_actions=network.num_actions, hidden_size=network.hidden_size,
            first_eval_seed=self.seeds.final, observation_normalization=delivery.policy.observation_stats))


def _plot_quietly(experiment: Path) -> None:
    """The learning curve beside the results, when matplotlib (the `plot` extra) is installed."""
    try:
        from jaxrl_lander.plotting import plot_experiments
    except ImportError:
        log.debug("matplotlib not installed; no learning-curve PNG")
        return
    plot_experiments([experiment])
