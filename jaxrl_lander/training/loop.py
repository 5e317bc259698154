"""The training loop: play and learn to the next due point, then notify. It writes no file itself: the
experiment's checkpoint and evaluation hooks are called when due, and every other event goes to the outputs.

The loop owns the train state: a collector plays with the state it is given, learns from each rollout it
completes (the learner's update), and returns the state, the finished episodes and the updates' metrics. The
host collector plays until the rollout is full or the next checkpoint or evaluation is due; the compiled one
plays whole rollouts until the one that holds the next due point is complete, and the checkpoints and
evaluations due inside that one are made afterwards with the parameters that played it. Either way they
happen at the same env steps as if the loop went one vector step at a time, and the episodes, updates and
metrics records of the steps in between are told in the order they happened.

The loop trains one agent, or several stacked on a leading axis of the train state (vectorised agents: one
collector and one vmapped update for all). Each agent has its own Progress and Outputs; they advance together,
but for an agent whose update failed, which stays at the step of its failure.
"""

import contextlib
import dataclasses
import time
from typing import Any, Protocol

import numpy as np

from jaxrl_lander.core.algos.base import Learner, TrainState
from jaxrl_lander.training.collect import Collector, Episode
from jaxrl_lander.config import RunConfig
from jaxrl_lander.config.errors import WriteFailed
from jaxrl_lander.outputs import Outputs


@dataclasses.dataclass
class Progress:
    """The counters a checkpoint carries from one process to the next."""

    timestep: int = 0
    updates: int = 0
    wall_time: float = 0.0  # training seconds spent by earlier processes
    loss: float | None = None  # of the latest update
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class Clock:
    """This process's training time: wall time since the loop started, evaluations during training excluded."""

    def __init__(self):
        self.start, self.excluded = time.perf_counter(), 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    @contextlib.contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start


class Hooks(Protocol):
    """What the run of the agents does when the loop says so."""

    def evaluate(self, params) -> list[dict[str, Any]]:
        """Deterministic episodes with `params`: the summary to record, one per agent."""

    def checkpoint(self, state: TrainState, agents: list[int], training_seconds: float) -> None:
        """Save the agents still training (their numbers) as they stand at their progress.timestep."""


@dataclasses.dataclass
class LoopResult:
    state: TrainState  # the last good state, with the latest key
    clock: Clock  # still running: the experiment's last checkpoint write counts as training time
    failure: str | None = None  # why training stopped: a checkpoint that could not be written, or (every agent)
    # a numerical fault
    agent_failures: list[str | None] = dataclasses.field(default_factory=list)  # each agent's numerical fault
    write_failed: bool = False  # the failure is a checkpoint that could not be written (a full disk)
    last_checkpoint: int | None = None  # the step of this process's latest checkpoint
    first_update_seconds: float | None = None  # from the first update's dispatch to its metrics, its compile
    # included; on envpool the first program call's (its compile is made before the loop: compile_seconds has it)

    def training(self) -> list[int]:
        """The agents still learning: those without a numerical fault."""
        return [i for i, failure in enumerate(self.agent_failures) if failure is None]


def crossed(before: int, after: int, interval: int) -> bool:
    """Whether a multiple of `interval` lies in (before, after]."""
    return after // interval > before // interval


def next_due(config: RunConfig, timestep: int) -> int:
    """The first env step after `timestep` at which a checkpoint, an evaluation or the end is due."""
    due = [(timestep // config.checkpoint_interval + 1) * config.checkpoint_interval, config.total_timesteps]
    if config.eval_interval:
        due.append((timestep // config.eval_interval + 1) * config.eval_interval)
    return min(due)


def due_points(config: RunConfig, start: int, end: int, size: int) -> list[int]:
    """The vector-step boundaries strictly between `start` and `end` at which a checkpoint or an evaluation is
    due: none for a collector that stops at the next one, several inside a compiled collector's rollout."""
    points = []
    while (point := -(-next_due(config, points[-1] if points else start) // size) * size) < end:
        points.append(point)
    return points


def train_loop(config: RunConfig, learner: Learner, collector: Collector, state: TrainState,
               progress: list[Progress], outputs: list[Outputs], hooks: Hooks, should_stop) -> LoopResult:
    """Collect, update and notify from the agents' progress.timestep (one step for all) until total_timesteps, a
    stop, or a non-finite update of every agent (an agent whose update is not finite keeps its last good state
    and is told nothing more).

    A checkpoint or an evaluation due inside a rollout (a compiled collector plays whole ones) is made with the
    parameters that played it, as when the loop reaches that step before the update."""
    result, size = LoopResult(state=state, clock=Clock(), agent_failures=[None] * len(progress)), collector.num_envs
    timestep = progress[0].timestep  # the same for every agent still learning (a failed one's stays at its failure)
    while timestep < config.total_timesteps and not should_stop():
        alive = [failure is None for failure in result.agent_failures]
        stretch = collector.advance(result.state, timestep, next_due(config, timestep), alive, should_stop)
        episodes, metrics = stretch.read()
        if metrics and result.first_update_seconds is None:
            result.first_update_seconds = time.perf_counter() - stretch.started
        last = len(stretch.ends) - 1
        for r, end in enumerate(stretch.ends):
            start, cut_short = timestep, False
            for point in due_points(config, start, end, size) if r == last else []:
                if should_stop():  # inside a compiled rollout: the run stops at the last step it reached
                    cut_short = True
                    break
                for i in result.training():
                    _tell(outputs[i], config, timestep, point, size, episodes[r][i], None, learned=True)
                timestep = _advance(progress, result.training(), point)
                if not _at_step(config, result, progress, hooks, outputs, stretch.acting, size, timestep):
                    cut_short = True
                    break
            if cut_short:  # the rollout's update is not taken in: a resume plays the rest of it
                result.state = stretch.acting
                return result
            told, timestep = timestep, _advance(progress, result.training(), end)
            learning = result.training()
            updates = _update(learner, result, metrics[r], progress) if r < len(metrics) else [None] * len(progress)
            for i in learning:
                _tell(outputs[i], config, told, end, size, episodes[r][i], updates[i],
                      learned=result.agent_failures[i] is None)
            if not result.training():
                result.failure = next(f for f in result.agent_failures if f)
                break
        result.state = stretch.state if stretch.state is not None else stretch.acting
        if result.failure or not _at_step(config, result, progress, hooks, outputs, result.state, size, timestep):
            break
    return result


def _advance(progress: list[Progress], agents: list[int], timestep: int) -> int:
    """The agents still learning at env step `timestep` (they advance together); returns it."""
    for i in agents:
        progress[i].timestep = timestep
    return timestep


def _at_step(config: RunConfig, result: LoopResult, progress: list[Progress], hooks: Hooks,
             outputs: list[Outputs], state: TrainState, size: int, end: int) -> bool:
    """The evaluation and checkpoint due at env step `end` (the end of a vector step: the learning agents'
    timestep), with `state`; False when the checkpoint could not be written (result.failure says why)."""
    training = result.training()
    if config.eval_interval and crossed(end - size, end, config.eval_interval):
        with result.clock.paused():
            summaries = hooks.evaluate(state.params)
        for i in training:
            progress[i].evaluations.append({"timestep": end, "training_seconds": progress[i].wall_time
                                            + result.clock.seconds(), **summaries[i]})
            outputs[i].evaluation(end, summaries[i])
    if crossed(end - size, end, config.checkpoint_interval) or end >= config.total_timesteps:
        try:
            hooks.checkpoint(state, training, progress[0].wall_time + result.clock.seconds())
        except (OSError, WriteFailed) as exc:  # a full disk, a vanished directory: stop, keep what is saved
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            result.failure = str(exc) if isinstance(exc, WriteFailed) else (
                f"could not write checkpoint {end} ({exc.strerror or exc}{where})")
            result.write_failed = True
            return False
        result.last_checkpoint = end
    return True


def _update(learner: Learner, result: LoopResult, metrics: dict[str, np.ndarray], progress: list[Progress]
            ) -> list[dict[str, float] | None]:
    """Take in an update's metrics on the host (a value per agent when there are several): an agent's first
    non-finite update is its failure (result.agent_failures says why; the update left its state as it was).
    Returns each agent's metrics as floats, with the step size it started from (None for an agent that failed)."""
    per_agent = [{k: float(np.reshape(v, -1)[i]) for k, v in metrics.items()} for i in range(len(progress))]
    told: list[dict[str, float] | None] = [None] * len(progress)
    for i in result.training():
        agent, values = progress[i], per_agent[i]
        agent.loss, agent.updates = values.pop("loss"), agent.updates + 1
        del values["params_finite"]  # the loss says which of the two was not finite
        if not values.pop("taken_in"):  # a loss or parameters not finite: stop before it reaches a checkpoint
            what = f"non-finite loss {agent.loss}" if not np.isfinite(agent.loss) else "non-finite parameters"
            result.agent_failures[i] = f"{what} at update {agent.updates} (step {agent.timestep})"
            continue
        told[i] = {"loss": agent.loss, **values, "learning_rate": learner.learning_rate_at(agent.updates - 1, i)}
    return told


def _tell(outputs: Outputs, config: RunConfig, start: int, end: int, size: int, episodes: list[Episode],
          update: dict[str, float] | None, learned: bool) -> None:
    """Tell the outputs what happened over the vector steps from `start` to `end`, in order: at each step its
    finished episodes, then (at the last step) the update, then the metrics record when one is due. After a
    failed update the last step's record is not made."""
    last_record = end if learned else end - size
    records = [t for t in range(start + size, last_record + 1, size) if crossed(t - size, t, config.recording_interval)]
    events = [(e.step, 0, e) for e in episodes if start < e.step <= end] + [(t, 2, None) for t in records]
    if update is not None:
        events.append((end, 1, update))
    for step, kind, payload in sorted(events, key=lambda event: event[:2]):
        if kind == 0:
            outputs.episode(step, payload.episode_return, payload.length)
        elif kind == 1:
            outputs.update(step, payload)
        else:
            outputs.record(step)
