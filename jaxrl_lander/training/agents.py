"""Vectorised agents: several experiments of one program (seeds, and float hyperparameters that are traced
values) trained in one process. Their train states are stacked on a leading agent axis; one envpool of
agents x num_envs sub-envs plays them all in the compiled rollout; the update is vmapped over the agent axis,
which is sharded over the local devices. Each agent is an Experiment of its own on disk: lock, checkpoints,
metrics, model and results JSON, as a standalone run writes them.
"""

import contextlib
import dataclasses
import logging
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.core.algos.base import Learner, Rollout, TrainState
from jaxrl_lander.storage.checkpoint import recover_model
from jaxrl_lander.storage.claim import ExperimentLock, check_rerun, recover_interrupted_overwrite
from jaxrl_lander.training.compiled import CompiledCollector
from jaxrl_lander.config import RunConfig
from jaxrl_lander.envs import check_envs
from jaxrl_lander.config.errors import ConfigError, Interrupted, ResumeError, TrainingFailed
from jaxrl_lander.training.evaluate import brief, evaluate_agents
from jaxrl_lander.training.experiment import Experiment
from jaxrl_lander.storage.files import ExperimentPaths, check_results_dir
from jaxrl_lander.training.loop import Progress, train_loop
from jaxrl_lander.outputs import Outputs, Watch
from jaxrl_lander.outputs.console import run_sinks
from jaxrl_lander.storage.metrics import now_iso
from jaxrl_lander.storage.results import Results, previous_results
from jaxrl_lander.training.runtime import CompileClock, Devices, StopOnSignal, enable_compilation_cache
from jaxrl_lander.training.seeding import train_env_seed
from jaxrl_lander.config.variants import check_agents

log = logging.getLogger("jaxrl_lander")


def stack(trees: list):
    """The trees stacked on a new leading axis, leaf by leaf."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def on_host(state: TrainState) -> TrainState:
    """Stacked train states copied to the host in one transfer (slicing device arrays leaf by leaf costs a
    dispatch each); the keys as their raw data."""
    return jax.device_get(state.replace(key=jax.random.key_data(state.key)))


def agent_of(host: TrainState, i: int) -> TrainState:
    """Agent i's train state, of stacked ones copied by `on_host`."""
    state = jax.tree.map(lambda leaf: leaf[i], host)
    return state.replace(key=jax.random.wrap_key_data(state.key))


def _by_agent(rollout: Rollout, agents: int) -> Rollout:
    """A rollout of agents x B sub-envs (agent-major) as `agents` rollouts stacked on a leading axis."""
    def time_major(x):  # (T, agents * B, ...) -> (agents, T, B, ...)
        return None if x is None else x.reshape(x.shape[0], agents, -1, *x.shape[2:]).swapaxes(0, 1)

    last_obs = rollout.last_obs.reshape(agents, -1, rollout.last_obs.shape[-1])
    return Rollout(*map(time_major, rollout[:4]), last_obs, time_major(rollout.valid))


class AgentsLearner:
    """The learners of agents of one program as one: their update vmapped over the stacked states, hyperparameters
    stacked beside them. Inside the update the agent axis is split over every local device of the update's kind
    (padded with copies of the last agent to a multiple of their number, the copies' results dropped); outside
    it, the stacked trees are whole on each device."""

    def __init__(self, learners: list[Learner], devices: Devices):
        first, self.learners, agents = learners[0], learners, len(learners)
        self.config, self.network, self.obs_dim = first.config, first.network, first.obs_dim
        local = jax.local_devices(backend=devices.update.platform)
        self.mesh = Mesh(np.array(local[:agents]), ("agents",))
        shards = int(self.mesh.devices.size)
        padded = -(-agents // shards) * shards
        split = NamedSharding(self.mesh, PartitionSpec("agents"))
        self.whole = NamedSharding(self.mesh, PartitionSpec())
        self.hparams = self.place(stack([learner.hparams for learner in learners]))
        inner = first.update.func  # the jitted pure update of one agent; under vmap it is traced once for all

        def update(state, rollout, hparams):
            def spread(x):  # (agents, ...) -> (padded, ...), split over the devices
                x = jnp.concatenate([x, jnp.repeat(x[-1:], padded - agents, axis=0)]) if padded > agents else x
                return jax.lax.with_sharding_constraint(x, split)

            args = jax.tree.map(spread, (state, _by_agent(rollout, agents), hparams))
            return jax.tree.map(lambda x: x[:agents], jax.vmap(inner)(*args))

        self._update = jax.jit(update, out_shardings=self.whole)

    def place(self, tree):
        """A tree whole on every device of the mesh."""
        return jax.device_put(tree, self.whole)

    def update(self, state: TrainState, rollout: Rollout):
        return self._update(self.place(state), self.place(rollout), self.hparams)

    def learning_rate_at(self, update: int, agent: int = 0) -> float:
        return self.learners[agent].learning_rate_at(update)


@dataclasses.dataclass
class AgentView:
    """What one agent's Experiment sees of the shared collector: its sub-envs' part of the rollout in progress."""

    collector: CompiledCollector
    index: int
    normalizer = None

    def pending(self, timestep: int) -> tuple[dict[str, np.ndarray], int]:
        arrays, filled = self.collector.pending(timestep)
        b = self.collector.num_envs
        part = slice(self.index * b, (self.index + 1) * b)
        return {name: a[part] if name == "next_obs" else a[:, part] for name, a in arrays.items()}, filled

    def close(self) -> None:  # the shared collector is closed once, by the agents
        pass


class Agents:
    """Experiments of one program trained together: the loop's hooks fanned out to each of them."""

    def __init__(self, configs: list[RunConfig], paths: list[ExperimentPaths], devices: Devices):
        self.configs, self.devices = configs, devices
        obs_dim, num_actions = check_envs(configs[0])
        self.learner = AgentsLearner([make_learner(c, obs_dim, num_actions) for c in configs], devices)
        self.collector = CompiledCollector(configs[0], self.learner, devices, agents=len(configs),
                                           gamma=[c.gamma for c in configs],
                                           reward_scale=[c.reward_scale for c in configs])
        self.experiments = [Experiment(c, p, devices, collector=AgentView(self.collector, i))
                            for i, (c, p) in enumerate(zip(configs, paths))]
        self.progress: list[Progress] = []
        self.signum: int | None = None  # the signal that stopped the agents

    def open(self) -> TrainState:
        """Every agent resumed from the latest step at which all of them have a checkpoint (later checkpoints of
        an agent that got further before a kill are dropped), or all of them afresh when none has one. Agents
        without a step in common are refused (ResumeError), nothing deleted."""
        steps = [set(_checkpoint_steps(e.paths)) for e in self.experiments]
        shared = set.intersection(*steps)
        common = max(shared) if shared else None
        config = self.configs[0]
        first_checkpoint = -(-config.checkpoint_interval // config.num_envs) * config.num_envs
        if common is None and any(s for s in steps if max(s, default=0) > first_checkpoint):
            # (a kill during the first round of checkpoints costs that round only: all start afresh)
            apart = [e.paths.name for e, s in zip(self.experiments, steps) if not s] or [
                e.paths.name for e in self.experiments]
            raise ResumeError(f"cannot resume these agents together: they have no checkpoint step in common"
                              f" ({', '.join(apart)} {'has' if len(apart) == 1 else 'have'} none that the others"
                              " have); train those seeds apart, or give the sweep another --name")
        for experiment, agent_steps in zip(self.experiments, steps):
            later = sorted(s for s in agent_steps if common is not None and s > common)
            if later:
                log.info("%s: dropping %d checkpoint(s) after step %d (%d-%d) to resume with the other agents",
                         experiment.paths.name, len(later), common, later[0], later[-1])
                for step in later:
                    _remove_checkpoint(experiment.paths, step)
        states = []
        try:
            for experiment in self.experiments:
                state, progress = experiment.open(resume=common is not None)
                states.append(state)
                self.progress.append(progress)
        except BaseException:  # one agent's checkpoint refused: the stores opened so far are closed, nothing written
            for experiment in self.experiments[:len(states)]:
                experiment.store.close()
            raise
        pending = [e.pending for e in self.experiments]
        self.pending = ({name: np.concatenate([p[0][name] for p in pending], axis=0 if name == "next_obs" else 1)
                         for name in pending[0][0]}, pending[0][1]) if any(pending) else None
        return self.learner.place(stack(states))

    # ---------------------------------------------------------------- the loop's hooks
    def evaluate(self, params) -> list[dict]:
        first = self.configs[0]
        return [brief(s) for s in evaluate_agents(self.learner.network, params, first.env_id,
                                                  first.eval_interval_episodes,
                                                  [e.seeds.during_training for e in self.experiments])]

    def checkpoint(self, state: TrainState, progress: list[Progress], training_seconds: float) -> None:
        state = on_host(state)
        for agent in progress:
            i = next(i for i, p in enumerate(self.progress) if p is agent)
            self.experiments[i].save(agent_of(state, i), agent, training_seconds)

    # ---------------------------------------------------------------- run and finish
    def run(self, state: TrainState, outputs: list[Outputs], watch: Watch | None = None) -> list[Results | Exception]:
        started = (now_iso(), self.progress[0].timestep, CompileClock())
        first = self.experiments[0]
        self.collector.start(state, train_env_seed(first.keys.env, self.progress[0].timestep))
        if self.pending:
            self.collector.resume_pending(*self.pending)
        log.info("%d agents: making their env and compiling their programs, then training from step %d",
                 len(self.experiments), self.progress[0].timestep)
        try:
            with StopOnSignal() as stop:
                result = train_loop(self.configs[0], self.learner, self.collector, state, self.progress, outputs,
                                    self, lambda: stop() or (watch is not None and watch.verdict is not None))
        except BaseException:
            self.close()
            raise
        self.signum = stop.signum
        final = on_host(result.state)
        evaluations = [None] * len(self.experiments)
        ended = self.progress[0].timestep >= self.configs[0].total_timesteps
        halted = watch.verdict if watch and not ended else None
        if stop.signum is None and not halted and not result.failure and not self.configs[0].select_best_checkpoint:
            # The agents' final evaluations played together; an agent whose update failed plays alone, unused.
            first = self.configs[0]
            log.info("final evaluation of %d agents: %d episodes each", len(self.experiments), first.eval_episodes)
            evaluations = evaluate_agents(self.learner.network, final.params, first.env_id, first.eval_episodes,
                                          [e.seeds.final for e in self.experiments], timed=True)
        finished: list[Results | Exception] = []
        for i, experiment in enumerate(self.experiments):
            try:
                finished.append(experiment.finish(agent_of(final, i), result, self.progress[i], outputs[i],
                                                  stop.signum, started, agent=i, evaluation=evaluations[i],
                                                  halted=halted))
            except TrainingFailed as exc:
                finished.append(exc)
        self.collector.close()
        return finished

    def close(self) -> None:
        """After an error: the shared env and every agent's checkpoint store (committed checkpoints stay)."""
        self.collector.close()
        for experiment in self.experiments:
            if experiment.store is not None:
                with contextlib.suppress(Exception):
                    experiment.store.close()


def _checkpoint_steps(paths: ExperimentPaths) -> list[int]:
    """The steps of an experiment's committed checkpoints (orbax names a step's directory by its number, and
    writes an unfinished one under a temporary name)."""
    directory = paths.checkpoints
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _remove_checkpoint(paths: ExperimentPaths, step: int) -> None:
    shutil.rmtree(paths.checkpoints / str(step))


def train_agents(configs: list[RunConfig], results_dirs: list[str | Path], device: str = "auto",
                 progress_bar: bool | None = None, watch: Watch | None = None) -> list[Results | Exception]:
    """Train `configs` (one program: check_agents) as vectorised agents, config i into
    results_dirs[i]/experiments/{algo}_seed{seed}/, resuming each from its checkpoints; an agent whose experiment
    has completed already is returned as it is; a `watch` sees every agent's events and may stop all of them
    early. One Results per config, or the TrainingFailed of an agent whose
    update stopped being finite. Raises ConfigError, ResumeError or ExperimentInUse before anything is written."""
    if isinstance(results_dirs, (str, Path)) or len(results_dirs) != len(configs):
        raise ConfigError("train_agents needs one results directory per config")
    check_agents(configs)
    paths = [ExperimentPaths.of(d, c.algo, c.seed) for c, d in zip(configs, results_dirs)]
    if len({p.root.resolve() for p in paths}) < len(paths):
        raise ConfigError("two agents would write the same experiment directory")
    results: list[Results | Exception | None] = []
    for config, agent_paths in zip(configs, paths):
        check_rerun(agent_paths, resume=True, overwrite=False)
        done = previous_results(agent_paths)
        finished = done and done.status == "completed" and done.total_timesteps >= config.total_timesteps
        diverged = done and done.status == "failed" and (done.reason or "").startswith("non-finite")
        results.append(done if finished else TrainingFailed(done.reason) if diverged else None)
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return results
    for directory in {str(d) for d in results_dirs}:
        check_results_dir(directory)
    devices = Devices.resolve(device)
    with contextlib.ExitStack() as held:
        for i in todo:
            held.enter_context(ExperimentLock(paths[i]))
            recover_interrupted_overwrite(paths[i])
            recover_model(paths[i].model)
        enable_compilation_cache()
        with jax.default_device(devices.update):
            agents = Agents([configs[i] for i in todo], [paths[i] for i in todo], devices)
            try:
                state = agents.open()
            except BaseException:
                agents.collector.close()
                raise
            start = agents.progress[0].timestep
            watched = f"{agents.experiments[0].paths.name} (shown, of {len(todo)} agents)"
            outputs = [Outputs(e.recorder, (run_sinks(e.config.total_timesteps, start, None, progress_bar, watched)
                                            if n == 0 else []) + ([watch.sink(n)] if watch else []), loss=p.loss)
                       for n, (e, p) in enumerate(zip(agents.experiments, agents.progress))]
            for n, p in enumerate(agents.progress if watch else []):
                watch.resumed(n, p.evaluations)
            for i, finished in zip(todo, agents.run(state, outputs, watch)):
                results[i] = finished
    if agents.signum is not None:
        raise Interrupted(agents.signum, f"{len(todo)} agents stopped by {signal.Signals(agents.signum).name} at step"
                                         f" {agents.progress[0].timestep}, each with a checkpoint there: run again to"
                                         " continue")
    return results
