"""The training loop: vector env <-> jitted act <-> host buffer <-> jitted update, plus checkpoints and records."""

import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np
from orbax.checkpoint.utils import TMP_DIR_SUFFIX

from jaxrl_lander.algos.common import TrainState, init_state, learning_rate_at, make_learner
from jaxrl_lander.checkpoint import CheckpointStore, save_model
from jaxrl_lander.config import ConfigError, RunConfig
from jaxrl_lander.errors import ResumeError, TrainingFailed, first_line
from jaxrl_lander.envs import eval_env_seed, make_vector_env, reset_envs, step_envs, train_env_seed
from jaxrl_lander.evaluate import brief, greedy_policy, run_episodes, summarize
from jaxrl_lander.normalization import Normalizer
from jaxrl_lander.policy import sample_action, state_value
from jaxrl_lander.recording import MetricsRecorder, is_partial_write, now_iso, write_json_atomic
from jaxrl_lander.rollout import RolloutBuffer

log = logging.getLogger("jaxrl_lander")

PACKAGES = ["jax", "jaxlib", "flax", "optax", "gymnasium", "box2d", "numpy", "orbax-checkpoint", "chex"]
# JAX reports the time it spends tracing, lowering and compiling; summing them gives the JIT cost of a run.
_JIT_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
}
_jit_seconds = [0.0]


def _count_jit_time(event: str, duration: float, **_) -> None:
    if event in _JIT_EVENTS:
        _jit_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_count_jit_time)

# Config keys that may differ between a checkpoint and the run resuming from it.
RESUMABLE_CHANGES = {
    "total_timesteps", "eval_episodes", "eval_interval", "eval_interval_episodes", "keep_checkpoints",
    "selection_candidates", "selection_episodes",  # how a completed run chooses among its kept checkpoints
}


@dataclasses.dataclass(frozen=True)
class ExperimentPaths:
    """Where one experiment's artifacts live: results/experiments/{algo}_seed{seed}/..."""

    root: Path
    name: str

    @classmethod
    def of(cls, results_dir: str | Path, config: RunConfig) -> "ExperimentPaths":
        name = f"{config.algo}_seed{config.seed}"
        return cls(root=Path(results_dir) / "experiments" / name, name=name)

    @property
    def model(self) -> Path:
        return self.root / f"{self.name}_model"

    @property
    def metrics(self) -> Path:
        return self.root / f"{self.name}_metrics.json"

    @property
    def results(self) -> Path:
        return self.root / f"{self.name}_results.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"


@dataclasses.dataclass(frozen=True)
class RunKeys:
    """The named keys one integer seed is split into."""

    state: jax.Array  # network init, then acting and minibatch shuffling (lives in TrainState)
    env: jax.Array  # training env seeds
    eval: jax.Array  # evaluation env seeds

    @classmethod
    def from_seed(cls, seed: int) -> "RunKeys":
        state, env, eval_ = jax.random.split(jax.random.key(seed), 3)
        return cls(state=state, env=env, eval=eval_)


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Keep compiled XLA programs on disk so a second run with the same shapes skips compilation.

    The directory is `path`, else $JAXRL_LANDER_JAX_CACHE, else ~/.cache/jaxrl_lander/jax; an empty
    $JAXRL_LANDER_JAX_CACHE turns the cache off. Returns the directory in use, or None.
    """
    if path is None:
        path = os.environ.get("JAXRL_LANDER_JAX_CACHE", str(Path.home() / ".cache" / "jaxrl_lander" / "jax"))
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return path


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


DEVICE_CHOICES = ("auto", "cpu", "gpu", "tpu")


def resolve_device(name: str) -> jax.Device:
    """'auto' is JAX's default device (the GPU when JAX's CUDA build is installed); else the first of a kind."""
    if name == "auto":
        return jax.devices()[0]
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"unknown device '{name}' (choose from {', '.join(DEVICE_CHOICES)})")
    try:
        return jax.devices(name)[0]
    except RuntimeError:
        raise ConfigError(f"no {name.upper()} is visible to JAX on this machine") from None


def resolve_act_device(name: str, update_device: jax.Device) -> jax.Device:
    """'auto' is the host CPU (the update's device where JAX was told to hide the CPU); else as resolve_device.

    Sampling a few actions per step is launch- and transfer-bound: on an H200 the host CPU ran it faster than
    the GPU did (README, "On a GPU"); on a CPU-only machine it is the update's own device.
    """
    if name != "auto":
        return resolve_device(name)
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return update_device


def device_info(update_device: jax.Device, act_device: jax.Device) -> dict[str, str]:
    return {
        "platform": update_device.platform,
        "device_kind": update_device.device_kind,
        "device": str(update_device),
        "act_device": str(act_device),
    }


class StopOnSignal:
    """While active, SIGINT and SIGTERM ask the loop to stop at the next step instead of killing it.

    A second signal gets the previous behaviour back (Ctrl-C twice still interrupts at once).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "StopOnSignal":
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


class ProgressBar:
    """Steps, steps/s, episodes, recent mean return and ETA on the terminal (rich)."""

    def __init__(self, total: int, start: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} steps"),
            TextColumn("{task.fields[rate]} steps/s"), TextColumn("{task.fields[episodes]} episodes"),
            TextColumn("return {task.fields[recent]}"), TimeRemainingColumn(), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=start, rate="-", episodes=0, recent="-")
        self.start, self.t0 = start, time.perf_counter()

    def update(self, timestep: int, episodes: int, recent: float | None) -> None:
        rate = (timestep - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, completed=timestep, rate=f"{rate:,.0f}", episodes=episodes,
                             recent="-" if recent is None else f"{recent:.1f}")

    def close(self) -> None:
        self.progress.stop()


def crossed(before: int, after: int, interval: int) -> bool:
    """Whether a multiple of `interval` lies in (before, after]."""
    return after // interval > before // interval


@dataclasses.dataclass
class Progress:
    """The counters a checkpoint carries from one process to the next."""

    timestep: int = 0
    updates: int = 0
    wall_time: float = 0.0  # training seconds spent by earlier processes
    loss: float | None = None
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class Trainer:
    """One experiment: builds env, learner and state, trains, evaluates and writes every artifact."""

    def __init__(
        self,
        config: RunConfig,
        results_dir: str | Path = "results",
        device: str = "auto",
        act_device: str = "auto",
        progress_bar: bool = False,
        tensorboard: bool = False,
    ):
        """`device` runs the update; `act_device` the per-step action sampling (by default the host CPU).

        With `progress_bar`, a live bar (rich) replaces the periodic progress log lines; with `tensorboard`,
        event files go to <experiment>/tensorboard (needs tensorboardX).
        """
        self.config = config
        self.progress_bar = progress_bar
        self.tensorboard = tensorboard
        self.device = resolve_device(device)
        self.act_device = resolve_act_device(act_device, self.device)
        self.paths = ExperimentPaths.of(results_dir, config)
        self.keys = RunKeys.from_seed(config.seed)
        self.envs = make_vector_env(config.env_id, config.num_envs)
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.learner = make_learner(config, int(self.envs.single_action_space.n))
        self.normalizer = None
        if config.normalize_observations or config.normalize_rewards:
            self.normalizer = Normalizer(self.obs_dim, config.num_envs, config.gamma,
                                         observations=config.normalize_observations, rewards=config.normalize_rewards)
        self.act = jax.jit(partial(sample_action, self.learner.policy))
        self.value = jax.jit(partial(state_value, self.learner.policy))

    def initial_state(self) -> TrainState:
        with jax.default_device(self.device):
            return init_state(
                policy=self.learner.policy, tx=self.learner.tx, key=self.keys.state, obs_dim=self.obs_dim
            )

    # ---------------------------------------------------------------- start or resume
    def _fresh_start(self) -> tuple[TrainState, MetricsRecorder, Progress]:
        if self.paths.root.exists():
            log.info("replacing the previous experiment at %s", self.paths.root)
            shutil.rmtree(self.paths.root)
        recorder = MetricsRecorder(
            self.paths.name, self.config.algo, self.config.env_id, self.config.seed, self.config.recording_interval
        )
        return self.initial_state(), recorder, Progress()

    def _resume(self, store: CheckpointStore) -> tuple[TrainState, MetricsRecorder, Progress]:
        """State, metrics and counters of the latest checkpoint; raises ResumeError before anything is written."""
        step = store.latest_step()
        try:
            state, meta = store.restore(step, self.initial_state())
        except Exception as exc:  # orbax and tensorstore raise many kinds; any of them means unreadable
            raise ResumeError(
                f"checkpoint {store.directory / str(step)} is unreadable ({first_line(exc)}); "
                "delete that directory to resume from the checkpoint before it"
            ) from None
        self._check_resumable_config(meta["config"])
        try:
            recorder = MetricsRecorder.load(self.paths.metrics)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeError(
                f"metrics file {self.paths.metrics} is unreadable ({first_line(exc)}); train without --resume "
                "to start afresh"
            ) from None
        recorder.truncate(step)
        removed = remove_partial_writes(self.paths)
        if removed:
            log.info("removed %d partial write(s) left by a killed run: %s", len(removed), ", ".join(removed))
        log.info("resuming %s from the checkpoint at step %d", self.paths.name, step)
        if self.normalizer is not None:
            self.normalizer.load_state_dict(meta["normalizer"])
        progress = Progress(
            timestep=meta["timestep"], updates=meta["updates"], wall_time=meta["wall_time"], loss=meta["loss"],
            evaluations=meta.get("evaluations", []),  # absent from checkpoints of older versions
        )
        return state, recorder, progress

    def _check_resumable_config(self, saved: dict[str, Any]) -> None:
        current = self.config.to_dict()
        # A key the checkpoint predates counts as its default, so checkpoints of older versions stay resumable.
        defaults = type(self.config)().to_dict()
        differing = sorted(
            k for k in set(saved) | set(current)
            if k not in RESUMABLE_CHANGES and saved.get(k, defaults.get(k)) != current.get(k)
        )
        if differing:
            raise ConfigError(
                f"cannot resume {self.paths.root}: config differs from the checkpoint in {', '.join(differing)}"
            )

    def _open(self, resume: bool) -> tuple[TrainState, MetricsRecorder, Progress, CheckpointStore]:
        """Resume from the latest complete checkpoint when asked and one exists, else start afresh."""
        if resume and self.paths.checkpoints.is_dir():
            store = CheckpointStore(self.paths.checkpoints, keep=self.config.keep_checkpoints)
            if store.latest_step() is not None:
                try:
                    return (*self._resume(store), store)
                except BaseException:
                    store.close()
                    raise
            store.close()
        if resume:
            log.info("no checkpoint to resume from in %s; starting afresh", self.paths.root)
        state, recorder, progress = self._fresh_start()
        return state, recorder, progress, CheckpointStore(self.paths.checkpoints, keep=self.config.keep_checkpoints)

    def greedy(self, params) -> Callable[[np.ndarray], np.ndarray]:
        """The deterministic policy of `params` on raw observations, normalised with the statistics as they
        stand (a copy: later training steps do not change them)."""
        standardize = self.normalizer.frozen_observations() if self.normalizer else None
        return greedy_policy(self.learner.policy, params, standardize)

    def selection_seed(self) -> int:
        """First seed of the candidate checkpoints' further episodes: past those of the evaluations during training."""
        return eval_env_seed(self.keys.eval) + self.config.eval_interval_episodes

    def final_eval_seed(self) -> int:
        """First seed of the final evaluation: the evaluation seeds, past those that selected the delivered
        checkpoint when one is selected (so the verdict is not on its selection's episodes)."""
        if not self.config.select_best_checkpoint:
            return eval_env_seed(self.keys.eval)
        return self.selection_seed() + self.config.selection_episodes

    def evaluate(self, params, episodes: int, keep_episodes: bool = False, seed: int | None = None) -> dict[str, Any]:
        """Deterministic episodes from `seed` on; by default the evaluation seeds (the same at every evaluation
        during training)."""
        seed = eval_env_seed(self.keys.eval) if seed is None else seed
        played = run_episodes(self.greedy(params), self.config.env_id, episodes, seed)
        summary = summarize(played)
        return summary if keep_episodes else brief(summary)

    def previous_results(self) -> dict[str, Any] | None:
        if not self.paths.results.is_file():
            return None
        try:
            with open(self.paths.results) as f:
                return json.load(f)
        except (OSError, ValueError) as exc:
            raise ResumeError(f"results file {self.paths.results} is unreadable ({first_line(exc)})") from None

    # ---------------------------------------------------------------- the loop
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Train (or resume), evaluate and write every artifact; returns the ExperimentResults dict.

        Raises ConfigError or ResumeError, with nothing written, when a resume is refused, and TrainingFailed
        after writing the results of a run stopped by a numerical fault.
        """
        done = self.previous_results() if resume else None
        if done and done["status"] == "completed" and done["total_timesteps"] >= self.config.total_timesteps:
            log.info("%s already finished %d steps; nothing to do", self.paths.name, done["total_timesteps"])
            return done
        with jax.default_device(self.device):
            state, recorder, progress, store = self._open(resume)
            run = _Run(self, state, recorder, progress, store)
            run.loop()
            return run.finish()


def remove_partial_writes(paths: ExperimentPaths) -> list[str]:
    """Delete what a killed process can leave half-written in an experiment: the temporary files of atomic
    writes (JSON, PNG, GIF) and uncommitted orbax directories (the model's and the checkpoints').
    Returns the removed paths, relative to the experiment directory."""
    removed = []
    for directory in (paths.root, paths.checkpoints):
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            if is_partial_write(path):
                path.unlink()
            elif TMP_DIR_SUFFIX in path.name and path.is_dir():
                shutil.rmtree(path)
            else:
                continue
            removed.append(str(path.relative_to(paths.root)))
    return removed


class _Run:
    """One process's share of an experiment: the collect/update loop and the artifacts it writes."""

    def __init__(self, trainer: Trainer, state: TrainState, recorder: MetricsRecorder, progress: Progress,
                 store: CheckpointStore):
        self.trainer, self.config, self.paths = trainer, trainer.config, trainer.paths
        self.state, self.recorder, self.progress, self.store = state, recorder, progress, store
        self.start_iso = now_iso()
        self.jit_seconds_before = _jit_seconds[0]
        self.t_start = time.perf_counter()
        self.start_step = progress.timestep
        self.eval_seconds = 0.0  # evaluation during training, excluded from the training time
        self.first_update_seconds: float | None = None
        self.last_checkpoint: int | None = None
        self.failure: str | None = None
        self.stop_signal: int | None = None
        # The acting copy of the parameters and the key live on act_device (the same arrays when it is `device`).
        self.act_params, self.key = jax.device_put((state.params, state.key), trainer.act_device)
        self.tb = None
        if trainer.tensorboard:
            from jaxrl_lander.tensorboard import TensorBoardLog

            self.tb = TensorBoardLog(self.paths.root / "tensorboard", progress.timestep)

    def loop_seconds(self) -> float:
        return time.perf_counter() - self.t_start - self.eval_seconds

    def training_seconds(self) -> float:
        return self.progress.wall_time + self.loop_seconds()

    def checkpoint(self) -> None:
        """Metrics first, so they always reach at least the latest checkpoint; then the orbax checkpoint."""
        p = self.progress
        self.last_checkpoint = p.timestep
        self.recorder.save(self.paths.metrics)
        meta = {
            "timestep": p.timestep,
            "updates": p.updates,
            "episodes": len(self.recorder.episodes),
            "recent_reward_mean": self.recorder.recent_reward_mean,
            "loss": p.loss,
            "wall_time": self.training_seconds(),
            "evaluations": p.evaluations,
            "saved_at": now_iso(),
            "config": self.config.to_dict(),
        }
        if self.trainer.normalizer is not None:
            meta["normalizer"] = self.trainer.normalizer.state_dict()
        self.store.save(p.timestep, self.state.replace(key=self.key), meta)

    def update(self, buffer: RolloutBuffer, last_obs: np.ndarray) -> None:
        """One learner update on the full buffer; sets self.failure instead of keeping a non-finite state."""
        trainer, p = self.trainer, self.progress
        t_update = time.perf_counter()
        rollout = buffer.rollout(last_obs, trainer.device)
        state, metrics = trainer.learner.update(self.state.replace(key=jax.device_put(self.key, trainer.device)),
                                                rollout)
        loss, params_finite = jax.device_get((metrics["loss"], metrics["params_finite"]))  # one host sync
        p.loss, p.updates = float(loss), p.updates + 1
        if self.first_update_seconds is None:
            self.first_update_seconds = time.perf_counter() - t_update
        if not (np.isfinite(p.loss) and params_finite):  # unusable: stop before it reaches a checkpoint
            what = f"non-finite loss {p.loss}" if not np.isfinite(p.loss) else "non-finite parameters"
            self.failure = f"{what} at update {p.updates} (step {p.timestep})"
            return
        self.state = state
        self.act_params, self.key = jax.device_put((state.params, state.key), trainer.act_device)
        if self.tb:
            self.tb.update(p.timestep, jax.device_get(metrics), learning_rate_at(self.config, p.updates - 1))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("update %d at step %d: %s", p.updates, p.timestep, {k: float(v) for k, v in metrics.items()})

    def evaluate_now(self) -> None:
        p = self.progress
        t_eval, training_seconds = time.perf_counter(), self.training_seconds()
        summary = self.trainer.evaluate(self.state.params, self.config.eval_interval_episodes)
        p.evaluations.append({"timestep": p.timestep, "training_seconds": training_seconds, **summary})
        self.eval_seconds += time.perf_counter() - t_eval
        log.info("evaluation at step %d: %.1f over %d episodes", p.timestep, summary["mean"], summary["episodes"])
        if self.tb:
            self.tb.evaluation(p.timestep, summary["mean"])

    def loop(self) -> None:
        """Collect, update, record, evaluate and checkpoint until done, stopped by a signal, or failed."""
        trainer, config, p, recorder = self.trainer, self.config, self.progress, self.recorder
        envs = trainer.envs
        buffer = RolloutBuffer(config.n_steps, config.num_envs, trainer.obs_dim)
        obs = reset_envs(envs, train_env_seed(trainer.keys.env, p.timestep), trainer.normalizer)
        value_fn = lambda o: trainer.value(self.act_params, o)  # noqa: E731  (reads the current parameters)
        log_every = max(config.total_timesteps // 10, 1)
        next_log = p.timestep + log_every
        bar = ProgressBar(config.total_timesteps, p.timestep) if trainer.progress_bar else None
        with StopOnSignal() as stop:  # SIGINT/SIGTERM end the loop at the next step
            while p.timestep < config.total_timesteps and stop.signum is None:
                actions, self.key = trainer.act(self.act_params, obs, self.key)
                actions = np.asarray(actions)
                outcome = step_envs(envs, actions, value_fn, config.gamma, config.reward_scale, trainer.normalizer)
                buffer.add(obs, actions, outcome.rewards, outcome.dones)
                obs = outcome.obs
                before, p.timestep = p.timestep, p.timestep + config.num_envs
                for _, episode_return, length in outcome.episodes:
                    recorder.add_episode(p.timestep, episode_return, length)
                    if self.tb:
                        self.tb.episode(p.timestep, episode_return, length)
                if buffer.full:
                    self.update(buffer, obs)
                    if self.failure:
                        break
                if crossed(before, p.timestep, config.recording_interval):
                    record = recorder.record(p.timestep, p.loss)
                    if self.tb:
                        self.tb.record(record)
                    if bar:
                        bar.update(p.timestep, len(recorder.episodes), recorder.recent_reward_mean)
                if config.eval_interval and crossed(before, p.timestep, config.eval_interval):
                    self.evaluate_now()
                if crossed(before, p.timestep, config.checkpoint_interval) or p.timestep >= config.total_timesteps:
                    self.checkpoint()
                if p.timestep >= next_log and not bar:
                    next_log += log_every
                    recent = recorder.recent_reward_mean
                    log.info(
                        "step %d/%d | %.0f steps/s | %d episodes | recent return %s",
                        p.timestep, config.total_timesteps, (p.timestep - self.start_step) / self.loop_seconds(),
                        len(recorder.episodes), "n/a" if recent is None else f"{recent:.1f}",
                    )
        if bar:
            bar.close()
        self.stop_signal = stop.signum

    def best_checkpoint(self) -> tuple[dict[str, Any], TrainState, dict[str, Any]]:
        """Evaluate the last parameters, then restore the checkpoints of the best `selection_candidates`
        evaluations during training (the earlier first, on a tie), each with its observation statistics; with
        several, each plays the same `selection_episodes` further episodes and the best mean there wins (the
        better evaluation during training, on a tie). Returns the record of the choice, the chosen state and the
        last parameters' evaluation (the final evaluation's episodes, kept)."""
        trainer, config = self.trainer, self.config
        t_eval = time.perf_counter()
        last = trainer.evaluate(self.state.params, config.eval_episodes, keep_episodes=True,
                                seed=trainer.final_eval_seed())
        last["seconds"] = time.perf_counter() - t_eval
        ranked = sorted(self.progress.evaluations, key=lambda e: -e["mean"])[:config.selection_candidates]
        candidates = []
        for evaluation in ranked:
            state, meta = self.store.restore(evaluation["timestep"], self.state)
            if trainer.normalizer is not None:
                trainer.normalizer.load_state_dict(meta["normalizer"])
            replay = None
            if config.selection_episodes:
                replay = trainer.evaluate(state.params, config.selection_episodes, seed=trainer.selection_seed())
                log.info("%s: the checkpoint at step %d (evaluation during training %.1f) plays %.1f",
                         self.paths.name, evaluation["timestep"], evaluation["mean"], replay["mean"])
            candidates.append(({"timestep": evaluation["timestep"], "evaluation_during_training": evaluation["mean"],
                                "selection_evaluation": replay}, state, meta))
        chosen = candidates[0]
        if config.selection_episodes:
            chosen = max(candidates, key=lambda c: c[0]["selection_evaluation"]["mean"])
        record, state, meta = chosen
        if trainer.normalizer is not None:
            trainer.normalizer.load_state_dict(meta["normalizer"])
        log.info("%s: delivering the checkpoint at step %d (evaluation during training %.1f; last parameters %.1f)",
                 self.paths.name, record["timestep"], record["evaluation_during_training"], last["mean"])
        selected = {"timestep": record["timestep"], "evaluation_during_training": record["evaluation_during_training"],
                    "last_parameters_evaluation": brief(last), "candidates": [c[0] for c in candidates]}
        return selected, state, last

    def finish(self) -> dict[str, Any]:
        """Final checkpoint (when stopped), model, evaluation, metrics and results."""
        trainer, config, p = self.trainer, self.config, self.progress
        status, reason = "completed", None
        if self.failure is not None:
            status, reason = "failed", self.failure
        elif self.stop_signal is not None:
            status, reason = "interrupted", f"stopped by {signal.Signals(self.stop_signal).name} at step {p.timestep}"
            if self.last_checkpoint != p.timestep:
                self.checkpoint()
        self.store.wait()  # the last checkpoint's write is training time, as every other's
        loop_seconds = self.loop_seconds()  # before the selection's evaluation, which is not
        compile_seconds = _jit_seconds[0] - self.jit_seconds_before
        selected = last_evaluation = None
        delivered_state, delivered_step = self.state, p.timestep
        if status == "completed" and config.select_best_checkpoint and p.evaluations:
            selected, delivered_state, last_evaluation = self.best_checkpoint()
            delivered_step = selected["timestep"]
        self.store.close()
        trainer.envs.close()
        state = self.state.replace(key=jax.device_put(self.key, trainer.device))
        if reason:
            log.warning("%s: %s", self.paths.name, reason)

        evaluation = None
        if status != "failed":
            policy_spec = {
                "num_actions": trainer.learner.policy.num_actions,
                "hidden_size": trainer.learner.policy.hidden_size,
                "obs_dim": trainer.obs_dim,
                "env_id": config.env_id,
                "algo": config.algo,
                "seed": config.seed,
                "timestep": delivered_step,
                "first_eval_seed": trainer.final_eval_seed(),
                "observation_normalization": trainer.normalizer.observation_spec() if trainer.normalizer else None,
            }
            save_model(self.paths.model, delivered_state.params, policy_spec)
        if status == "completed":
            if last_evaluation is not None and delivered_step == p.timestep:
                evaluation = last_evaluation  # the selection chose the last parameters: the same play, not repeated
            else:
                t_eval = time.perf_counter()
                evaluation = trainer.evaluate(delivered_state.params, config.eval_episodes, keep_episodes=True,
                                              seed=trainer.final_eval_seed())
                evaluation["seconds"] = time.perf_counter() - t_eval
            if self.tb:
                self.tb.evaluation(p.timestep, evaluation["mean"])
        if self.tb:
            self.tb.close()

        self.recorder.save(self.paths.metrics)
        results = build_results(
            config, self.paths, self.recorder, self.store, evaluation,
            start_iso=self.start_iso, end_iso=now_iso(),
            training_time=p.wall_time + loop_seconds,
            steps_this_run=p.timestep - self.start_step, loop_seconds=loop_seconds,
            first_update_seconds=self.first_update_seconds, compile_seconds=compile_seconds, updates=p.updates,
            evaluations=p.evaluations, device=device_info(trainer.device, trainer.act_device),
            resumed_from=self.start_step or None, status=status, reason=reason, timestep=p.timestep,
            selected_checkpoint=selected,
        )
        write_json_atomic(self.paths.results, results)
        trainer.final_state = state
        if status == "failed":
            raise TrainingFailed(f"{reason}; the last good checkpoint is kept in {self.paths.checkpoints}")
        return results


def build_results(
    config: RunConfig,
    paths: ExperimentPaths,
    recorder: MetricsRecorder,
    store: CheckpointStore,
    evaluation: dict[str, Any] | None,
    *,
    start_iso: str,
    end_iso: str,
    training_time: float,
    steps_this_run: int,
    loop_seconds: float,
    first_update_seconds: float | None,
    compile_seconds: float,
    updates: int,
    evaluations: list[dict[str, Any]],
    device: dict[str, str],
    resumed_from: int | None,
    status: str = "completed",
    reason: str | None = None,
    timestep: int | None = None,
    selected_checkpoint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ExperimentResults entity, success criteria included."""
    checkpoint_steps = store.all_steps()
    progression = [{"timestep": s, "reward": recorder.reward_at(s)} for s in checkpoint_steps]
    with_reward = [p["reward"] for p in progression if p["reward"] is not None]
    expected_checkpoints = -(-config.total_timesteps // config.checkpoint_interval)
    if config.keep_checkpoints:
        expected_checkpoints = min(expected_checkpoints, config.keep_checkpoints)
    artifacts = {
        "experiment_dir": str(paths.root),
        "model": paths.model.name,
        "metrics": paths.metrics.name,
        "results": paths.results.name,
        "checkpoints": [f"{paths.checkpoints.name}/{s}" for s in checkpoint_steps],
    }
    missing = [name for name in (artifacts["model"], artifacts["metrics"]) if not (paths.root / name).exists()]
    eval_mean = evaluation["mean"] if evaluation else None
    steps_per_second = steps_this_run / loop_seconds if loop_seconds > 0 else None
    threshold = config.solve_threshold
    first_solve = next((e for e in evaluations if e["mean"] >= threshold), None)
    solved = {
        "threshold": threshold,
        "timestep": first_solve["timestep"] if first_solve else None,
        "training_seconds": first_solve["training_seconds"] if first_solve else None,
    }
    return {
        "experiment_id": paths.name,
        "status": status,
        "reason": reason,
        "timestep": timestep if timestep is not None else config.total_timesteps,
        "algorithm": config.algo,
        "environment": config.env_id,
        "seed": config.seed,
        "total_timesteps": config.total_timesteps,
        "updates": updates,
        "hyperparameters": config.to_dict(),
        "start_time": start_iso,
        "end_time": end_iso,
        "training_time_seconds": training_time,
        "steps_per_second": steps_per_second,
        "first_update_seconds": first_update_seconds,
        "compile_seconds": compile_seconds,
        "resumed_from_timestep": resumed_from,
        "final_metrics": {**recorder.statistics(), "recent_reward_mean": recorder.recent_reward_mean},
        "evaluation": evaluation,
        "selected_checkpoint": selected_checkpoint,
        "evaluations_during_training": evaluations,
        "solved": solved,
        "learning_progression": progression,
        "artifacts": artifacts,
        "package_versions": package_versions(),
        "device": device,
        "success_criteria": {
            "SC-003": {
                "description": "training finishes in under 30 minutes",
                "value": training_time, "threshold": 1800.0, "passed": training_time < 1800.0,
            },
            "SC-004": {
                "description": "reproducible: std of the final reward between two runs of the same seed < 0.01",
                "value": None, "threshold": 0.01, "passed": None,
            },
            "SC-005": {
                "description": "every artifact present: model, metrics, results and one checkpoint per interval",
                "value": {"checkpoints": len(checkpoint_steps), "expected_checkpoints": expected_checkpoints,
                          "missing": missing},
                "threshold": None,
                "passed": not missing and len(checkpoint_steps) == expected_checkpoints,
            },
            "SC-006": {
                "description": f"mean deterministic evaluation return > {threshold:g}",
                "value": eval_mean, "threshold": threshold,
                "passed": None if eval_mean is None else eval_mean > threshold,
            },
            "SC-008": {
                "description": "learning progression: recent return at the last checkpoint above that at the first",
                "value": {"first": with_reward[0] if with_reward else None,
                          "last": with_reward[-1] if with_reward else None},
                "threshold": None,
                "passed": len(with_reward) >= 2 and with_reward[-1] > with_reward[0],
            },
        },
    }
