"""The run of N >= 1 agents, the one way training happens: `train` is a run of one agent, `train_agents` (a sweep's
vectorised seeds, a tuning trial's) a run of several. Every capability (resume, overwrite, --init-from,
TensorBoard, the act device, stops and kills, a watch) is written here once and serves both.

A run checks its input once, takes each agent's lock, opens each agent's experiment directory (afresh, or all of
them at their latest common checkpoint), trains them in one loop (one learner and one collector for all: the
agents' train states stacked on a leading axis when there are several) and finishes each experiment.

One job: the lifecycle of a run, from its checks to each agent's outcome; what an agent's directory holds is
experiment.py's, the loop is loop.py's.
"""

import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from jaxrl_lander.config import RESUMABLE_CHANGES, EnvShape, RunConfig, check_resumable
from jaxrl_lander.config.errors import ConfigError, Interrupted, ResumeError, TrainingFailed
from jaxrl_lander.config.variants import check_agents
from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.core.algos.base import TrainState
from jaxrl_lander.envs import check_envs
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.outputs import Outputs, Watch
from jaxrl_lander.outputs.console import run_sinks
from jaxrl_lander.outputs.plotting import plot_learning_curve
from jaxrl_lander.storage.checkpoint import committed_steps, discard
from jaxrl_lander.storage.model import model_spec, recover_model
from jaxrl_lander.storage.claim import (ExperimentLock, Overwrite, check_rerun, holds_experiment,
                                        recover_interrupted_overwrite)
from jaxrl_lander.storage.files import ExperimentPaths, check_results_dir, check_writable
from jaxrl_lander.storage.metrics import now_iso
from jaxrl_lander.storage.results import Results, previous_results
from jaxrl_lander.training.agents import AgentsLearner, agent_of, on_host, stack
from jaxrl_lander.training.collect import HostCollector
from jaxrl_lander.training.compiled import CompiledCollector
from jaxrl_lander.training.evaluate import Policy, brief, evaluate, evaluate_agents
from jaxrl_lander.training.experiment import End, Experiment, Pending
from jaxrl_lander.training.loop import Progress, train_loop
from jaxrl_lander.training.runtime import CompileClock, Devices, StopOnSignal, enable_compilation_cache
from jaxrl_lander.training.seeding import RunKeys, train_env_seed
from jaxrl_lander.training.starting_point import StartingPoint, load_starting_point

log = logging.getLogger("jaxrl_lander")


def train(config: RunConfig, results_dir: str | Path = "results", *, resume: bool = False, overwrite: bool = False,
          device: str = "auto", act_device: str = "auto", tensorboard: bool = False,
          progress_bar: bool | None = None, watch: Watch | None = None, init_from: str | Path | None = None,
          claim: ExperimentLock | None = None) -> Results:
    """Train `config` into results_dir/experiments/{algo}{env}_seed{seed}/ (ExperimentPaths.of), as `python -m
    jaxrl_lander train` does.

    An existing experiment of the same algorithm, env and seed is continued from its latest complete checkpoint with
    `resume` (a finished run's results are returned untouched), replaced with `overwrite` (once the new run has
    committed its first checkpoint; until then the old one stays whole), and otherwise refused. `device` runs the
    update, `act_device` the per-step action sampling (auto: JAX's default device, and the host CPU).
    `progress_bar` (default: when stderr is a terminal) replaces the progress log lines; `tensorboard` adds event
    files. A `watch` sees the run's events and may stop it early (the results' stop is then "watch").
    `init_from` (a model or experiment directory) starts a new experiment from the parameters and normaliser
    statistics another one delivered, with a fresh optimiser (recorded in the results as initialized_from).
    `claim` is the experiment's lock when the caller holds it already, for longer than this run (`reproduce`).
    A run stopped by a signal returns its results (status "interrupted", `stop` the signal's name).
    Raises ConfigError, ResumeError or ExperimentInUse (another process is writing the experiment), with
    nothing written, when the run is refused, and TrainingFailed after writing the results of a run stopped by a
    numerical fault.
    """
    (outcome,), _ = run_agents([config], [results_dir], resume=resume, overwrite=overwrite, device=device,
                               act_device=act_device, tensorboard=tensorboard, progress_bar=progress_bar,
                               watch=watch, init_from=init_from, claim=claim)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train_agents(configs: list[RunConfig], results_dirs: list[str | Path], *, overwrite: bool = False,
                 device: str = "auto", act_device: str = "auto", tensorboard: bool = False,
                 progress_bar: bool | None = None, watch: Watch | None = None,
                 init_from: str | Path | None = None) -> list[Results | Exception]:
    """Train `configs` (one program: check_agents) together, config i into results_dirs[i]/experiments/
    {algo}{env}_seed{seed}/, each resumed from its checkpoints (an agent whose experiment has completed already is
    returned as it is), or, with `overwrite` or `init_from`, each a new experiment (one that exists is replaced
    with `overwrite`, else refused). The options are train()'s; a `watch` sees every agent's events and may stop
    all of them.
    One Results per config, or the TrainingFailed of an agent whose update stopped being finite. Raises
    ConfigError, ResumeError or ExperimentInUse before anything is written, and Interrupted after a signal
    stopped the agents (each with a checkpoint)."""
    if isinstance(results_dirs, (str, Path)) or len(results_dirs) != len(configs):
        raise ConfigError("train_agents needs one results directory per config")
    if not configs:
        raise ConfigError("train_agents needs at least one config")
    outcomes, stopped = run_agents(configs, results_dirs, resume=not overwrite and init_from is None,
                                   overwrite=overwrite, device=device,
                                   act_device=act_device, tensorboard=tensorboard, progress_bar=progress_bar,
                                   watch=watch, init_from=init_from)
    if stopped is not None:
        raise Interrupted(stopped.signal, stopped.message(outcomes))
    return outcomes


def run_agents(configs: list[RunConfig], results_dirs: list[str | Path], *, resume: bool, overwrite: bool = False,
               device: str = "auto", act_device: str = "auto", tensorboard: bool = False,
               progress_bar: bool | None = None, watch: Watch | None = None, init_from: str | Path | None = None,
               claim: ExperimentLock | None = None) -> tuple[list[Results | Exception], "Stopped | None"]:
    """The run of `configs` (N >= 1 agents of one program), train()'s options for all: each agent's Results, or
    the TrainingFailed or Interrupted its experiment ended with; and, when a signal stopped the run, which and
    where. Every check is made here, once, before anything is written."""
    check_agents(configs)
    paths = [ExperimentPaths.of(d, c) for c, d in zip(configs, results_dirs)]
    if len({p.root.resolve() for p in paths}) < len(paths):
        raise ConfigError("two agents would write the same experiment directory")
    if init_from is not None and resume:
        raise ConfigError("--init-from starts a new experiment and --resume continues one: give one of them")
    if claim is not None and not (len(paths) == 1 and claim.held
                                  and claim.paths.root.absolute() == paths[0].root.absolute()):
        raise ValueError(f"claim is not a held lock of {paths[0].root}")
    configs, outcomes = list(configs), [None] * len(configs)
    for i, agent_paths in enumerate(paths):
        check_rerun(agent_paths, resume, overwrite, can_resume=init_from is None)
        done = previous_results(agent_paths) if resume else None
        if done and done.status == "completed" and done.total_timesteps >= configs[i].total_timesteps:
            check_resumable(configs[i], done.hyperparameters, agent_paths.root, source="the finished run's")
            if len(configs) > 1:  # agents step together: left alone, its picture drawn again if a kill lost it
                if not agent_paths.learning_curve.exists():
                    plot_learning_curve(agent_paths.root)
                outcomes[i] = done
            elif _whole(agent_paths, done):
                outcomes[i] = done
            else:
                configs[i] = dataclasses.replace(configs[i], total_timesteps=done.total_timesteps)  # delivered again
        elif (done and done.status == "failed" and done.failure == "numerical" and len(configs) > 1
              and not configs[i].differences(done.hyperparameters, ignore=RESUMABLE_CHANGES)):
            outcomes[i] = TrainingFailed(done.reason)  # the same config would fail at the same update again
    todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
    if not todo:
        return outcomes, None
    for directory in dict.fromkeys(str(d) for d in results_dirs):
        check_results_dir(directory)
    for i in todo:
        check_writable(paths[i].root, f"experiment {paths[i].root}")
    dims = check_envs(configs[todo[0]])  # one program: one env for all
    start = load_starting_point(init_from, configs[todo[0]], dims) if init_from is not None else None
    if start is not None and any(Path(start.record["model"]).resolve().parent == paths[i].root.resolve()
                                 for i in todo):
        raise ConfigError(f"--init-from {start.record['model']}: that is the model of the experiment this run"
                          " would write")
    if tensorboard:
        from jaxrl_lander.outputs.tensorboard import require_tensorboard

        require_tensorboard()
    devices = Devices.resolve(device, act_device)
    with contextlib.ExitStack() as held:
        for i in todo:
            if claim is None:
                held.enter_context(ExperimentLock(paths[i]))
            recover_interrupted_overwrite(paths[i])
            recover_model(paths[i].model)
            check_rerun(paths[i], resume, overwrite, can_resume=init_from is None)  # again: a run that held the
            # lock until now may have made it
        replaces = [Overwrite(paths[i]) if overwrite and holds_experiment(paths[i]) else None for i in todo]
        enable_compilation_cache()
        with jax.default_device(devices.update):
            run = Run([configs[i] for i in todo], [paths[i] for i in todo], replaces, devices, dims, start)
            try:
                state = run.open(resume)
                outputs = run.outputs(tensorboard, progress_bar, watch)
            except BaseException:
                run.close()
                raise
            finished = run.run(state, outputs, watch)
    for i, outcome in zip(todo, finished):
        outcomes[i] = outcome
    stopped = run.stopped_by and Stopped(run.stopped_by, run.timestep, len(todo), overwrite)
    return outcomes, stopped


class Stopped(NamedTuple):
    """A run that a signal stopped: the signal, the step its agents reached, how many were training."""

    signal: signal.Signals
    timestep: int
    agents: int
    overwrite: bool = False

    def message(self, outcomes: list) -> str:
        """What the stop left, for people: a checkpoint at the step reached, the previous experiment as it was (an
        overwrite stopped before its first checkpoint), or an agent's earlier failure."""
        where = f"stopped by {self.signal.name} at step {self.timestep}"
        again = " (without overwrite)" if self.overwrite else ""
        kept = [o for o in outcomes if isinstance(o, Interrupted)]
        failed = [o for o in outcomes if isinstance(o, TrainingFailed)]
        stopped = [o for o in outcomes if getattr(o, "status", None) == "interrupted"]  # Results
        if self.agents == 1:
            return str(kept[0]) if kept else f"{where}, with a checkpoint there: run again{again} to continue"
        parts = [f"{self.agents} agents {where}"]
        if kept:
            parts.append(f"{len(kept)} kept {'its' if len(kept) == 1 else 'their'} previous experiment (stopped"
                         " before the overwrite's first checkpoint)")
        if stopped:
            parts.append(("each" if len(stopped) == self.agents else f"{len(stopped)}") + " with a checkpoint"
                         + (f" there: run again{again} to continue" if not kept else " there"))
        if failed:
            parts.append(f"{len(failed)} had failed: {failed[0]}")
        return "; ".join(parts)


def _whole(paths: ExperimentPaths, done: Results) -> bool:
    """Whether a finished run is whole, so that there is nothing to do. Its learning-curve PNG, if missing (a kill
    between its results and its plot), is drawn again; a model missing, or not the one its results name (a kill
    while it finished), is not whole: the run delivers it again from its last checkpoint."""
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


class Run:
    """N >= 1 agents of one program trained together: one learner and one collector for all (with several, the
    train states stacked on a leading agent axis, envpool's env holding each agent's sub-envs, the update
    vmapped), an Experiment per agent for its directory, and the loop's evaluation and checkpoint hooks."""

    def __init__(self, configs: list[RunConfig], paths: list[ExperimentPaths], replaces: list[Overwrite | None],
                 devices: Devices, dims: EnvShape, start: StartingPoint | None = None):
        self.config, self.devices, self.start = configs[0], devices, start
        self.agents = len(configs)
        self.learners = [make_learner(c, *dims) for c in configs]
        self.learner = self.learners[0] if self.agents == 1 else AgentsLearner(self.learners, devices)
        self.network = self.learners[0].network
        self.env = EnvChoice.of(self.config)  # every agent's (check_agents): training on gymnasium, evaluations
        if self.config.env_backend == "envpool":
            self.collector = CompiledCollector(self.config, self.learner, devices,
                                               agents=None if self.agents == 1 else self.agents,
                                               gamma=[c.gamma for c in configs],
                                               reward_scale=[c.reward_scale for c in configs])
        else:
            self.collector = HostCollector(self.env.make_vector(self.config.num_envs), self.learner,
                                           self.config, devices)
        self.keys = [RunKeys.from_seed(c.seed) for c in configs]
        self.experiments = [Experiment(c, p, dims.obs_dim, r, start) for c, p, r in zip(configs, paths, replaces)]
        self.progress: list[Progress] = []
        self.stopped_by: signal.Signals | None = None  # the signal that stopped the run

    # ---------------------------------------------------------------- open
    def open(self, resume: bool) -> TrainState:
        """Every agent at the latest step at which all of them have a checkpoint when `resume` (later checkpoints
        of an agent that got further before a kill are dropped), else afresh; ResumeError, nothing deleted, for
        agents without a step in common."""
        steps = [set(committed_steps(e.paths.checkpoints)) if resume else set() for e in self.experiments]
        shared = set.intersection(*steps)
        common = max(shared) if shared else None
        config = self.config
        first_checkpoint = -(-config.checkpoint_interval // config.num_envs) * config.num_envs
        if common is None and any(s for s in steps if max(s, default=0) > first_checkpoint):
            # (a kill during the first round of checkpoints costs that round only: all start afresh)
            apart = [e.paths.name for e, s in zip(self.experiments, steps) if not s] or [
                e.paths.name for e in self.experiments]
            raise ResumeError(f"cannot resume these agents together: they have no checkpoint step in common"
                              f" ({', '.join(apart)} {'has' if len(apart) == 1 else 'have'} none that the others"
                              " have); train those seeds apart, or give the sweep another --name")
        fresh = [learner.init(keys.state) for learner, keys in zip(self.learners, self.keys)]
        template_rollout = self.collector.pending(0)[0]
        later = [sorted(s for s in agent_steps if common is not None and s > common) for agent_steps in steps]
        if any(later):  # every agent's checkpoint at `common` checked before any later one is dropped
            for i, experiment in enumerate(self.experiments):
                experiment.check_checkpoint(common, fresh[i], self._part(template_rollout, i))
        for experiment, dropped in zip(self.experiments, later):
            if dropped:
                log.info("%s: dropping %d checkpoint(s) after step %d (%d-%d) to resume with the other agents",
                         experiment.paths.name, len(dropped), common, dropped[0], dropped[-1])
                for step in dropped:
                    discard(experiment.paths.checkpoints / str(step))
        states, normalizer = [], self.collector.normalizer
        try:
            for i, experiment in enumerate(self.experiments):
                state, progress = experiment.open(resume and (common is not None or self.agents == 1), fresh[i],
                                                  self._part(template_rollout, i), normalizer)
                if state is None:
                    state = fresh[i]
                    if self.start:
                        state = state.replace(params=self.start.params,
                                              opt_state=self.learners[i].tx.init(self.start.params))
                        if normalizer is not None:
                            normalizer.start_from(self.start.observations, self.start.returns)
                states.append(state)
                self.progress.append(progress)
        except BaseException:  # one agent's checkpoint refused: the stores opened so far are closed, nothing written
            for experiment in self.experiments[:len(states)]:
                experiment.store.close()
            raise
        pending = [e.pending for e in self.experiments]
        self.pending = None
        if any(pending):
            self.pending = ({name: np.concatenate([p[0][name] for p in pending], axis=0 if name == "next_obs" else 1)
                             for name in pending[0][0]}, pending[0][1])
        if self.agents == 1:  # committed, as every update's output: one signature
            return jax.device_put(states[0], self.devices.update)
        return self.learner.place(stack(states))

    @property
    def timestep(self) -> int:
        """The env step the run reached (an agent whose update failed stays at its failure's)."""
        return max(progress.timestep for progress in self.progress)

    def _part(self, arrays: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        """Agent i's sub-envs' part of a rollout's arrays (the collector's are agent-major)."""
        if self.agents == 1:
            return arrays
        b = self.config.num_envs
        part = slice(i * b, (i + 1) * b)
        return {name: a[part] if name == "next_obs" else a[:, part] for name, a in arrays.items()}

    def outputs(self, tensorboard: bool, progress_bar: bool | None, watch: Watch | None) -> list[Outputs]:
        """Each agent's outputs: its metrics and TensorBoard; the progress bar or lines show the first agent."""
        start = self.progress[0].timestep
        shown = f"{self.experiments[0].paths.name} (shown, of {self.agents} agents)" if self.agents > 1 else ""
        outputs = []
        for n, (experiment, progress) in enumerate(zip(self.experiments, self.progress)):
            board = experiment.paths.tensorboard if tensorboard else None
            sinks = run_sinks(experiment.config.total_timesteps, start, board, progress_bar, shown, console=n == 0)
            outputs.append(Outputs(experiment.recorder, sinks + ([watch.sink(n)] if watch else []),
                                   loss=progress.loss))
            if watch:
                watch.resumed(n, progress.evaluations)
        return outputs

    # ---------------------------------------------------------------- the loop's hooks
    def policy(self, params) -> Policy:
        """One agent's policy of `params`, with the observation statistics as they stand (a copy)."""
        normalizer = self.collector.normalizer
        return Policy(self.network, params, normalizer.observation_spec() if normalizer else None)

    def evaluate(self, params) -> list[dict]:
        config = self.config
        if self.agents == 1:
            return [brief(evaluate(self.policy(params), self.env, config.eval_interval_episodes,
                                   self.experiments[0].seeds.during_training))]
        return [brief(s) for s in evaluate_agents(self.network, params, self.env, config.eval_interval_episodes,
                                                  [e.seeds.during_training for e in self.experiments])]

    def checkpoint(self, state: TrainState, agents: list[int], training_seconds: float) -> None:
        host = state if self.agents == 1 else on_host(state)
        for i in agents:
            agent_state = host if self.agents == 1 else agent_of(host, i)
            self.experiments[i].save(agent_state, self.progress[i], training_seconds, self._pending(i),
                                     self.collector.normalizer)

    def _pending(self, i: int) -> Pending:
        arrays, filled = self.collector.pending(self.progress[i].timestep)
        return self._part(arrays, i), filled

    # ---------------------------------------------------------------- run and finish
    def run(self, state: TrainState, outputs: list[Outputs], watch: Watch | None = None
            ) -> list[Results | Exception]:
        start_time, start_step, compile_clock = now_iso(), self.progress[0].timestep, CompileClock()
        if self.agents > 1:
            log.info("%d agents: making their env and compiling their programs, then training from step %d",
                     self.agents, start_step)
        config = self.config
        try:
            self.collector.start([train_env_seed(keys.env, start_step) for keys in self.keys])
            if self.pending:
                self.collector.resume_pending(state, *self.pending)
            with StopOnSignal() as stop:  # a signal during the compile stops the run before the loop's first step
                self.collector.prepare(state)
                result = train_loop(config, self.learner, self.collector, state, self.progress, outputs, self,
                                    lambda: stop() or (watch is not None and watch.verdict is not None))
            self.stopped_by = signal.Signals(stop.signum) if stop.signum is not None else None
            ended = self.timestep >= config.total_timesteps
            verdict = watch.verdict if watch and not ended else None
            end = End(start_time, start_step, compile_clock,
                      stop=self.stopped_by.name if self.stopped_by else "watch" if verdict else None, verdict=verdict)
            final = result.state if self.agents == 1 else on_host(result.state)
            evaluations = [None] * self.agents
            if self.agents > 1 and not end.stopped and not result.failure and not config.select_best_checkpoint:
                # The agents' final evaluations played together; an agent whose update failed plays alone, unused.
                log.info("final evaluation of %d agents: %d episodes each", self.agents, config.eval_episodes)
                evaluations = evaluate_agents(self.network, final.params, self.env, config.eval_episodes,
                                              [e.seeds.final for e in self.experiments], timed=True)
            finished: list[Results | Exception] = []
            for i, experiment in enumerate(self.experiments):
                agent_state = final if self.agents == 1 else agent_of(final, i)
                save_stop = self._stop_checkpoint(i, agent_state, result.clock)
                try:
                    finished.append(experiment.finish(agent_state, result, self.progress[i], outputs[i], end,
                                                      self.policy, save_stop, self.devices, agent=i,
                                                      evaluation=evaluations[i]))
                except (TrainingFailed, Interrupted) as exc:
                    finished.append(exc)
        finally:
            self.close()
        return finished

    def _stop_checkpoint(self, i: int, state: TrainState, clock) -> Callable[[], None]:
        """What writes agent i's checkpoint at a stop, at its progress as it stands (training time, as every other
        checkpoint's write)."""
        progress = self.progress[i]
        return lambda: self.experiments[i].save(state, progress, progress.wall_time + clock.seconds(),
                                                self._pending(i), self.collector.normalizer)

    def close(self) -> None:
        """The collector's env and every agent's checkpoint store (committed checkpoints stay)."""
        self.collector.close()
        for experiment in self.experiments:
            if experiment.store is not None:
                with contextlib.suppress(Exception):
                    experiment.store.close()
