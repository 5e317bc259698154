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
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrl_lander.algos.common import TrainState, init_state, make_learner
from jaxrl_lander.checkpoint import CheckpointStore, save_model
from jaxrl_lander.config import ConfigError, RunConfig
from jaxrl_lander.errors import TrainingFailed
from jaxrl_lander.envs import eval_env_seed, make_vector_env, step_envs, train_env_seed
from jaxrl_lander.evaluate import greedy_policy, run_episodes, summarize
from jaxrl_lander.policy import sample_action, state_value
from jaxrl_lander.recording import MetricsRecorder, now_iso, write_json_atomic
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
RESUMABLE_CHANGES = {"total_timesteps", "eval_episodes", "eval_interval", "eval_interval_episodes"}


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


class Trainer:
    """One experiment: builds env, learner and state, trains, evaluates and writes every artifact."""

    def __init__(
        self,
        config: RunConfig,
        results_dir: str | Path = "results",
        device: str = "auto",
        act_device: str = "auto",
        progress_bar: bool = False,
    ):
        """`device` runs the update (and, by default, everything); `act_device` the per-step action sampling.

        With `progress_bar`, a live bar (rich) replaces the periodic progress log lines.
        """
        self.config = config
        self.progress_bar = progress_bar
        self.device = resolve_device(device)
        self.act_device = self.device if act_device == "auto" else resolve_device(act_device)
        self.paths = ExperimentPaths.of(results_dir, config)
        self.keys = RunKeys.from_seed(config.seed)
        self.envs = make_vector_env(config.env_id, config.num_envs)
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.learner = make_learner(config, int(self.envs.single_action_space.n))
        self.act = jax.jit(partial(sample_action, self.learner.policy))
        self.value = jax.jit(partial(state_value, self.learner.policy))

    def initial_state(self) -> TrainState:
        with jax.default_device(self.device):
            return init_state(
                policy=self.learner.policy, tx=self.learner.tx, key=self.keys.state, obs_dim=self.obs_dim
            )

    # ---------------------------------------------------------------- start or resume
    def _fresh_start(self) -> tuple[TrainState, MetricsRecorder, dict[str, Any]]:
        if self.paths.root.exists():
            log.info("replacing the previous experiment at %s", self.paths.root)
            shutil.rmtree(self.paths.root)
        recorder = MetricsRecorder(
            self.paths.name, self.config.algo, self.config.env_id, self.config.seed, self.config.recording_interval
        )
        progress = {"timestep": 0, "updates": 0, "wall_time": 0.0, "loss": None, "evaluations": []}
        return self.initial_state(), recorder, progress

    def _resume(self, store: CheckpointStore) -> tuple[TrainState, MetricsRecorder, dict[str, Any]]:
        step = store.latest_step()
        state, meta = store.restore(step, self.initial_state())
        saved = meta["config"]
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
        recorder = MetricsRecorder.load(self.paths.metrics)
        recorder.truncate(step)
        log.info("resuming %s from the checkpoint at step %d", self.paths.name, step)
        progress = {k: meta[k] for k in ("timestep", "updates", "wall_time", "loss")}
        progress["evaluations"] = meta.get("evaluations", [])  # absent from checkpoints of older versions
        return state, recorder, progress

    def evaluate(self, params, episodes: int, keep_episodes: bool = False) -> dict[str, Any]:
        """Deterministic episodes on the evaluation seeds (the same seeds at every evaluation)."""
        played = run_episodes(greedy_policy(self.learner.policy, params), self.config.env_id, episodes,
                              eval_env_seed(self.keys.eval))
        summary = summarize(played)
        if not keep_episodes:
            summary = {k: summary[k] for k in ("episodes", "mean", "std", "min", "max")}
        return summary

    def previous_results(self) -> dict[str, Any] | None:
        if not self.paths.results.is_file():
            return None
        with open(self.paths.results) as f:
            return json.load(f)

    # ---------------------------------------------------------------- the loop
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Train (or resume), evaluate and write every artifact; returns the ExperimentResults dict."""
        with jax.default_device(self.device):
            return self._train(resume)

    def _train(self, resume: bool) -> dict[str, Any]:
        config = self.config
        done = self.previous_results() if resume else None
        if done and done["status"] == "completed" and done["total_timesteps"] >= config.total_timesteps:
            log.info("%s already finished %d steps; nothing to do", self.paths.name, done["total_timesteps"])
            return done
        store = None
        if resume and self.paths.checkpoints.is_dir():
            store = CheckpointStore(self.paths.checkpoints, keep=config.keep_checkpoints)
            if store.latest_step() is None:
                store.close()
                store = None
        if store is not None:
            state, recorder, progress = self._resume(store)
        else:
            if resume:
                log.info("no checkpoint to resume from in %s; starting afresh", self.paths.root)
            state, recorder, progress = self._fresh_start()
            store = CheckpointStore(self.paths.checkpoints, keep=config.keep_checkpoints)

        start_iso = now_iso()
        jit_seconds_before = _jit_seconds[0]
        t_start = time.perf_counter()
        start_step = timestep = progress["timestep"]
        updates, loss = progress["updates"], progress["loss"]
        evaluations = list(progress["evaluations"])
        eval_seconds = 0.0  # evaluation during training, excluded from the training time

        def training_seconds() -> float:
            return progress["wall_time"] + time.perf_counter() - t_start - eval_seconds

        buffer = RolloutBuffer(config.n_steps, config.num_envs, self.obs_dim)
        obs, _ = self.envs.reset(seed=train_env_seed(self.keys.env, timestep))
        # The acting copy of the parameters and the key live on act_device (the same arrays when it is `device`).
        act_params, key = jax.device_put((state.params, state.key), self.act_device)
        first_update_seconds = None
        value_fn = lambda o: self.value(act_params, o)  # noqa: E731  (reads the current parameters)

        last_checkpoint = None
        failure = None

        def checkpoint(step: int) -> None:
            nonlocal last_checkpoint
            last_checkpoint = step
            recorder.save(self.paths.metrics)  # metrics first: they always reach at least the latest checkpoint
            meta = {
                "timestep": step,
                "updates": updates,
                "episodes": len(recorder.episodes),
                "recent_reward_mean": recorder.recent_reward_mean,
                "loss": loss,
                "wall_time": training_seconds(),
                "evaluations": evaluations,
                "saved_at": now_iso(),
                "config": config.to_dict(),
            }
            store.save(step, state.replace(key=key), meta)

        next_log = timestep + max(config.total_timesteps // 10, 1)
        bar = ProgressBar(config.total_timesteps, timestep) if self.progress_bar else None
        with StopOnSignal() as stop:  # SIGINT/SIGTERM end the loop at the next step
            while timestep < config.total_timesteps and stop.signum is None:
                actions, key = self.act(act_params, obs, key)
                actions = np.asarray(actions)
                outcome = step_envs(self.envs, actions, value_fn, config.gamma)
                buffer.add(obs, actions, outcome.rewards, outcome.dones)
                obs = outcome.obs
                before, timestep = timestep, timestep + config.num_envs
                for _, episode_return, length in outcome.episodes:
                    recorder.add_episode(timestep, episode_return, length)

                if buffer.full:
                    t_update = time.perf_counter()
                    rollout = buffer.rollout(obs, self.device)
                    state, metrics = self.learner.update(state.replace(key=jax.device_put(key, self.device)), rollout)
                    act_params, key = jax.device_put((state.params, state.key), self.act_device)
                    loss = float(metrics["loss"])  # the one host sync of a rollout
                    updates += 1
                    if first_update_seconds is None:
                        first_update_seconds = time.perf_counter() - t_update
                    if not np.isfinite(loss):  # the new state is unusable: stop before it reaches a checkpoint
                        failure = f"non-finite loss {loss} at update {updates} (step {timestep})"
                        break
                    if log.isEnabledFor(logging.DEBUG):
                        values = {k: float(v) for k, v in metrics.items()}
                        log.debug("update %d at step %d: %s", updates, timestep, values)
                if crossed(before, timestep, config.recording_interval):
                    recorder.record(timestep, loss)
                    if bar:
                        bar.update(timestep, len(recorder.episodes), recorder.recent_reward_mean)
                if config.eval_interval and crossed(before, timestep, config.eval_interval):
                    t_eval = time.perf_counter()
                    evaluations.append({"timestep": timestep, "training_seconds": training_seconds(),
                                        **self.evaluate(state.params, config.eval_interval_episodes)})
                    eval_seconds += time.perf_counter() - t_eval
                    log.info("evaluation at step %d: %.1f over %d episodes", timestep, evaluations[-1]["mean"],
                             config.eval_interval_episodes)
                if crossed(before, timestep, config.checkpoint_interval) or timestep >= config.total_timesteps:
                    checkpoint(timestep)
                if timestep >= next_log and not bar:
                    next_log += max(config.total_timesteps // 10, 1)
                    elapsed = time.perf_counter() - t_start
                    recent = recorder.recent_reward_mean
                    log.info(
                        "step %d/%d | %.0f steps/s | %d episodes | recent return %s",
                        timestep, config.total_timesteps, (timestep - start_step) / elapsed,
                        len(recorder.episodes), "n/a" if recent is None else f"{recent:.1f}",
                    )
        if bar:
            bar.close()
        status, reason = "completed", None
        if failure is not None:
            status, reason = "failed", failure
        elif stop.signum is not None:
            status, reason = "interrupted", f"stopped by {signal.Signals(stop.signum).name} at step {timestep}"
            if last_checkpoint != timestep:
                checkpoint(timestep)
        store.close()
        loop_seconds = time.perf_counter() - t_start - eval_seconds
        compile_seconds = _jit_seconds[0] - jit_seconds_before
        self.envs.close()
        state = state.replace(key=jax.device_put(key, self.device))
        if reason:
            log.warning("%s: %s", self.paths.name, reason)

        policy_spec = {
            "num_actions": self.learner.policy.num_actions,
            "hidden_size": self.learner.policy.hidden_size,
            "obs_dim": self.obs_dim,
            "env_id": config.env_id,
            "algo": config.algo,
            "seed": config.seed,
            "timestep": timestep,
        }
        evaluation = None
        if status != "failed":
            save_model(self.paths.model, state.params, policy_spec)
        if status == "completed":
            t_eval = time.perf_counter()
            evaluation = self.evaluate(state.params, config.eval_episodes, keep_episodes=True)
            evaluation["seconds"] = time.perf_counter() - t_eval

        recorder.save(self.paths.metrics)
        results = build_results(
            config, self.paths, recorder, store, evaluation,
            start_iso=start_iso, end_iso=now_iso(),
            training_time=progress["wall_time"] + loop_seconds,
            steps_this_run=timestep - start_step, loop_seconds=loop_seconds,
            first_update_seconds=first_update_seconds, compile_seconds=compile_seconds, updates=updates,
            evaluations=evaluations, device=device_info(self.device, self.act_device), resumed_from=start_step or None,
            status=status, reason=reason, timestep=timestep,
        )
        write_json_atomic(self.paths.results, results)
        self.final_state = state
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
