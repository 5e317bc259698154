"""One experiment directory of a run (one agent's): open it afresh or at a checkpoint, save its checkpoints as the
run reaches them, and finish it (model, final evaluation, metrics and results JSON). It owns its directory
only: the run of one or more agents (run.py) owns the learner, the collector, the keys and the loop.
"""

import dataclasses
import logging
import shutil
import signal
from collections.abc import Callable
from typing import Any

from jaxrl_lander.config import RunConfig, check_resumable
from jaxrl_lander.config.errors import ConfigError, Interrupted, ResumeError, TrainingFailed, WriteFailed, first_line
from jaxrl_lander.core.algos.base import TrainState
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.envs.normalization import Normalizer
from jaxrl_lander.outputs import Outputs
from jaxrl_lander.outputs.plotting import plot_learning_curve
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.storage.model import ModelSpec, save_model
from jaxrl_lander.storage.claim import Overwrite, check_starting_afresh
from jaxrl_lander.storage.files import ExperimentPaths, remove_partial_writes, write_json_atomic
from jaxrl_lander.storage.metrics import MetricsRecorder, now_iso
from jaxrl_lander.storage.results import Results, build_results
from jaxrl_lander.training.evaluate import Policy, evaluate
from jaxrl_lander.training.loop import LoopResult, Progress
from jaxrl_lander.training.runtime import CompileClock, Devices, package_versions
from jaxrl_lander.training.seeding import EvalSeeds
from jaxrl_lander.training.selection import Delivery, select_checkpoint
from jaxrl_lander.training.starting_point import StartingPoint

log = logging.getLogger("jaxrl_lander")

Pending = tuple[dict[str, Any], int]  # a rollout in progress: its arrays (with next_obs) and the rows filled


@dataclasses.dataclass(frozen=True)
class End:
    """Where a run of agents began and how it ended, as each agent's finish reads it."""

    start_time: str
    start_step: int
    compile_clock: CompileClock
    stop: str | None = None  # what stopped it early: "SIGINT" or "SIGTERM", or "watch" (a watch's verdict)
    verdict: str | None = None  # the watch's reason, when it stopped the run

    @property
    def stopped(self) -> bool:
        return self.stop is not None


class Experiment:
    """One agent's experiment directory: its checkpoint store, metrics recorder and journal, model and results."""

    def __init__(self, config: RunConfig, paths: ExperimentPaths, obs_dim: int, replace: Overwrite | None = None,
                 start: StartingPoint | None = None):
        self.config, self.obs_dim, self.replace = config, obs_dim, replace
        self.initialized_from = start.record if start else None  # recorded in every checkpoint and the results
        self.paths = replace.staged if replace else paths  # an overwrite writes aside until its first checkpoint
        self.seeds = EvalSeeds.of(config)
        self.recorder: MetricsRecorder | None = None
        self.write_failed = False  # a file of the run could not be written (a full disk): --resume goes on later
        self.pending: Pending | None = None  # a resumed checkpoint's partly collected rollout
        self.store: CheckpointStore | None = None

    # ---------------------------------------------------------------- open
    def open(self, resume: bool, template: TrainState, rollout: dict[str, Any], normalizer: Normalizer | None
             ) -> tuple[TrainState | None, Progress]:
        """At the latest complete checkpoint when asked and one exists (its state restored into the shapes of
        `template` and `rollout`, its normaliser statistics into `normalizer`), else afresh: (None, Progress())
        with the directory emptied of what a run killed before its first checkpoint left."""
        if resume and self.paths.checkpoints.is_dir():
            self.store = self._writing_store()
            try:
                if self.store.latest_step() is not None:
                    return self._resume(template, rollout, normalizer)
            except BaseException:
                self.store.close()
                raise
            self.store.close()
        if not self.replace:  # an overwrite's staging directory holds nothing of value
            check_starting_afresh(self.paths)
        if resume and self.paths.root.exists():
            log.info("no checkpoint to resume from in %s; starting afresh", self.paths.root)
        if self.paths.root.exists():  # what a run killed or failed before its first checkpoint left, or a
            shutil.rmtree(self.paths.root)  # staging directory: nothing committed is lost
        config = self.config
        self.recorder = MetricsRecorder(self.paths.name, config.algo, config.env_id, config.seed,
                                        config.recording_interval)
        self.store = self._writing_store()
        return None, Progress()

    def _writing_store(self) -> CheckpointStore:
        """The store this run's checkpoints go to. Its own thread saves them where the loop's thread waits on
        compiled programs (envpool); with gymnasium's env the loop's thread steps Python, and a save thread's
        Python would take turns with it on the interpreter lock: measured slower than saving in place. Makes the
        experiment's directories: the metrics journal goes beside them from the first checkpoint on."""
        self.paths.checkpoints.mkdir(parents=True, exist_ok=True)
        return CheckpointStore(self.paths.checkpoints, keep=self.config.keep_checkpoints,
                               async_save=self.config.env_backend == "envpool")

    def check_checkpoint(self, step: int, template: TrainState, rollout: dict[str, Any]) -> None:
        """ConfigError or ResumeError, nothing written, unless this experiment can resume from its checkpoint at
        `step` (before a run of several agents drops this one's later checkpoints to resume with the others)."""
        store = CheckpointStore(self.paths.checkpoints)
        try:
            self._read(store, step, template, rollout)
        finally:
            store.close()
        self._read_metrics(step)

    def _read_metrics(self, step: int) -> MetricsRecorder:
        """The metrics as they stood at the checkpoint of `step` (from the journal, or the metrics JSON), or
        ResumeError."""
        source = self.paths.metrics_journal if self.paths.metrics_journal.is_file() else self.paths.metrics
        try:
            return MetricsRecorder.load(source, until=step)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"metrics file {source} is unreadable ({first_line(exc)}); --overwrite starts the"
                              " experiment afresh") from None

    def _read(self, store: CheckpointStore, step: int, template: TrainState, rollout: dict[str, Any]
              ) -> tuple[TrainState, dict[str, Any], dict[str, Any] | None]:
        """The state, metadata and pending rollout of the checkpoint at `step`, or ConfigError (a config it may
        not resume) or ResumeError (unreadable)."""
        try:
            meta = store.run_metadata(step)
            # The config first: a state of another shape (hidden_size, optimizer) is not an unreadable one.
            check_resumable(self.config, meta["config"], self.paths.root, step)
            state, _, saved_rollout = store.restore_run(step, template, rollout)
        except ConfigError:
            raise
        except Exception as exc:  # orbax and tensorstore raise many kinds; any of them means unreadable
            raise ResumeError(f"checkpoint {store.directory / str(step)} is unreadable ({first_line(exc)}); "
                              "delete that directory to resume from the checkpoint before it") from None
        return state, meta, saved_rollout

    def _resume(self, template: TrainState, rollout: dict[str, Any], normalizer: Normalizer | None
                ) -> tuple[TrainState, Progress]:
        """State, metrics and counters of the latest checkpoint; raises before anything is written."""
        step = self.store.latest_step()
        state, meta, saved_rollout = self._read(self.store, step, template, rollout)
        self.recorder = self._read_metrics(step)
        self.recorder.continue_journal(self.paths.metrics_journal, step)
        removed = remove_partial_writes(self.paths)
        if removed:
            log.info("removed %d partial write(s) left by a killed run: %s", len(removed), ", ".join(removed))
        log.info("resuming %s from the checkpoint at step %d", self.paths.name, step)
        self.initialized_from = meta.get("initialized_from")
        if normalizer is not None:
            normalizer.load_state_dict(meta["normalizer"])
        if saved_rollout is not None:  # a checkpoint written before rollouts were kept resumes at a rollout's start
            self.pending = saved_rollout, meta["rollout_filled"]
        return state, Progress(timestep=meta["timestep"], updates=meta["updates"], wall_time=meta["wall_time"],
                               loss=meta["loss"], evaluations=meta["evaluations"])

    # ---------------------------------------------------------------- checkpoints
    def save(self, state: TrainState, progress: Progress, training_seconds: float, pending: Pending,
             normalizer: Normalizer | None) -> None:
        """Metrics first, so that they always reach at least the latest checkpoint; then the orbax checkpoint of
        `state` with `pending`, the rollout in progress."""
        self.recorder.append_journal(self.paths.metrics_journal, progress.timestep)
        rollout, filled = pending
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
        self.store = self._writing_store()
        log.info("replaced the previous experiment at %s", self.paths.root)

    # ---------------------------------------------------------------- finish
    def finish(self, state: TrainState, result: LoopResult, progress: Progress, outputs: Outputs, end: "End",
               policy: Callable[[Any], Policy], save_stop: Callable[[], None], devices: Devices, agent: int = 0,
               evaluation: dict | None = None) -> Results:
        """The end of a run for this agent: a stop checkpoint (`save_stop` writes it), the model, the final
        evaluation, metrics and results JSON. `state` is this agent's, number `agent` of the loop's; `policy`
        makes its Policy of parameters; `evaluation`: the final evaluation of the last parameters, when already
        played. Raises TrainingFailed after writing the results of a failed run, and Interrupted (or
        TrainingFailed) when an overwrite ends before its first checkpoint, the old experiment kept."""
        numerical = bool(result.agent_failures[agent]) or (result.failure is not None and not result.write_failed)
        failure = result.agent_failures[agent] or result.failure
        status, reason, stop = ("failed", failure, None) if failure else ("completed", None, None)
        if end.stopped and not failure:
            status, stop = "interrupted", end.stop
            reason = end.verdict if stop == "watch" else f"stopped by {stop} at step {progress.timestep}"
        if self.replace:  # an overwrite stopped or failed before its first checkpoint: the old experiment stays
            self._failed_write(status, reason, self.store.close, "the last checkpoint")
            self.replace.discard()
            message = (f"{reason}, before the overwrite's first checkpoint; the previous experiment at"
                       f" {self.replace.final.root} is kept as it was")
            if status == "interrupted" and stop != "watch":
                raise Interrupted(signal.Signals[stop], message)
            raise TrainingFailed(message, write_failed=result.write_failed)
        if status == "interrupted" and result.last_checkpoint != progress.timestep:
            status, reason = self._failed_write(status, reason, save_stop, f"the checkpoint at {progress.timestep}")
        # the last checkpoint's write is training time, as every other's
        status, reason = self._failed_write(status, reason, self.store.wait, "the last checkpoint")
        loop_seconds = result.clock.seconds()  # before the selection's evaluations, which are not
        compile_seconds = end.compile_clock.seconds()
        delivery = self._deliver(state, progress, status, policy)
        self._failed_write(status, reason, self.store.close, "the last checkpoint")
        if status != "failed":
            status, reason = self._failed_write(status, reason, lambda: self._save_model(delivery), "the model")
        if status == "interrupted":  # a failure's reason is the error the run ends with; a watch's verdict is news
            (log.info if stop == "watch" else log.warning)("%s: %s", self.paths.name, reason)
        if status != "completed":
            evaluation = None
        else:
            if delivery.evaluation:  # played by the selection
                evaluation = delivery.evaluation
            elif delivery.step != progress.timestep or evaluation is None:
                log.info("%s: final evaluation, %d episodes", self.paths.name, self.config.eval_episodes)
                evaluation = evaluate(delivery.policy, EnvChoice.of(self.config), self.config.eval_episodes,
                                      self.seeds.final, timed=True)
            outputs.evaluation(progress.timestep, evaluation, final=True)
        outputs.close(progress.timestep)
        status, reason = self._failed_write(status, reason, lambda: self.recorder.save(self.paths.metrics),
                                            self.paths.metrics.name)
        results = build_results(
            self.config, self.paths, self.recorder, self.store.all_steps(), evaluation, progress.evaluations,
            status=status, reason=reason, timestep=progress.timestep, updates=progress.updates,
            start_time=end.start_time, end_time=now_iso(), training_time_seconds=progress.wall_time + loop_seconds,
            steps_per_second=(progress.timestep - end.start_step) / loop_seconds if loop_seconds > 0 else None,
            first_update_seconds=result.first_update_seconds, compile_seconds=compile_seconds,
            resumed_from_timestep=end.start_step or None, selected_checkpoint=delivery.selected,
            initialized_from=self.initialized_from, stop=stop if status == "interrupted" else None,
            failure=("numerical" if numerical else "write") if status == "failed" else None,
            package_versions=package_versions(), device=devices.describe())
        status, reason = self._failed_write(status, reason, lambda: write_json_atomic(self.paths.results,
                                                                                       results.to_dict()),
                                            self.paths.results.name)
        if status == "failed":
            kept = (f"the last good checkpoint is kept in {self.paths.checkpoints}" if results.artifacts["checkpoints"]
                    else "no checkpoint was written before it")
            raise TrainingFailed(f"{reason}; {kept}", write_failed=result.write_failed or self.write_failed)
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

    def _deliver(self, state: TrainState, progress: Progress, status: str, policy: Callable[[Any], Policy]
                 ) -> Delivery:
        last = Delivery(progress.timestep, policy(state.params))
        if status != "completed" or not self.config.select_best_checkpoint or not progress.evaluations:
            return last
        return select_checkpoint(self.config, self.store, state, last.policy, progress.timestep,
                                 progress.evaluations, self.paths.name)

    def _save_model(self, delivery: Delivery) -> None:
        network = delivery.policy.network
        save_model(self.paths.model, delivery.policy.params, ModelSpec(
            algo=self.config.algo, env_id=self.config.env_id, seed=self.config.seed, timestep=delivery.step,
            obs_dim=self.obs_dim, num_actions=network.action_size,
            hidden_size=network.hidden_size, first_eval_seed=self.seeds.final,
            observation_normalization=delivery.policy.observation_stats, env_options=self.config.env_options()))
