"""Where a run's events go. The loop tells Outputs once per event; Outputs keeps the metrics recorder (the
TrainingMetrics JSON, whose records the other sinks are shown) and passes each event on to every sink.

A sink overrides the hooks it cares about; adding one touches no loop code.
"""

from typing import Any

from jaxrl_lander.storage.metrics import MetricsRecorder


class Sink:
    """One destination of a run's events; every hook does nothing unless overridden."""

    def episode(self, step: int, episode_return: float, length: int) -> None:
        """A training episode ended at env step `step`."""

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """An update finished at `step`: its loss terms and learning_rate, as host floats."""

    def record(self, record: dict[str, Any]) -> None:
        """A metrics record (MetricsRecorder.record): rolling means at its timestep."""

    def evaluation(self, step: int, summary: dict[str, Any], final: bool = False) -> None:
        """Deterministic episodes were played with the parameters at `step`: during training, or the final
        evaluation of the delivered parameters (`final`)."""

    def close(self, step: int) -> None:
        """The run is over, at env step `step`."""


class Watch:
    """Someone outside a run, or outside vectorised agents' runs, who sees their events and may end them before
    total_timesteps (a tuning study's pruner): once `verdict` says why, the runs stop at their next step as
    stopped runs do (a checkpoint each, status "interrupted", that reason)."""

    verdict: str | None = None

    def sink(self, agent: int) -> Sink:
        """Where agent number `agent`'s events go (0 for a single run)."""
        raise NotImplementedError

    def resumed(self, agent: int, evaluations: list[dict[str, Any]]) -> None:
        """Agent `agent` resumed from a checkpoint holding these evaluations during training."""


class Outputs:
    """The metrics recorder and the sinks, told of each event in the order it happened."""

    def __init__(self, recorder: MetricsRecorder, sinks: list[Sink], loss: float | None = None):
        self.recorder, self.sinks = recorder, sinks
        self.loss = loss  # of the latest update, for the next record (a resumed run starts with its checkpoint's)

    def episode(self, step: int, episode_return: float, length: int) -> None:
        self.recorder.add_episode(step, episode_return, length)
        for sink in self.sinks:
            sink.episode(step, episode_return, length)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        self.loss = metrics["loss"]
        for sink in self.sinks:
            sink.update(step, metrics)

    def record(self, step: int) -> None:
        record = self.recorder.record(step, self.loss)
        for sink in self.sinks:
            sink.record(record)

    def evaluation(self, step: int, summary: dict[str, Any], final: bool = False) -> None:
        for sink in self.sinks:
            sink.evaluation(step, summary, final)

    def close(self, step: int) -> None:
        for sink in self.sinks:
            sink.close(step)


__all__ = ["MetricsRecorder", "Outputs", "Sink", "Watch"]
