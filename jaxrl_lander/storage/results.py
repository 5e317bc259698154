"""The ExperimentResults entity: what a run reports (typed, and as the results JSON), success criteria included.

The success criteria are the seed document's: SC-003 training under 30 minutes, SC-004 reproducible (measured
by `reproduce`), SC-005 every artifact present, SC-006 mean evaluation return above the solve threshold, SC-008
the rolling training return higher at the last checkpoint than at the first.
"""

import dataclasses
from pathlib import Path
from typing import Any

from jaxrl_lander.config import RunConfig, make_config
from jaxrl_lander.config.errors import ResumeError, first_line
from jaxrl_lander.storage.files import ExperimentPaths, read_json
from jaxrl_lander.storage.metrics import MetricsRecorder
from jaxrl_lander.config.redact import shorten

STATUSES = ("completed", "interrupted", "failed")
STOPS = ("SIGINT", "SIGTERM", "watch")  # what stops a run early
FAILURES = ("numerical", "write")  # what fails a run
SC003_SECONDS = 1800.0
SC004_STD = 0.01


@dataclasses.dataclass(frozen=True)
class Results:
    """One run's outcome, as its {name}_results.json holds it (storage/schemas/experiment_results.schema.json)."""

    experiment_id: str
    status: str  # "completed", "interrupted" or "failed"
    reason: str | None  # why an interrupted or failed run stopped, for people (no code reads it)
    timestep: int  # env steps reached
    algorithm: str
    environment: str
    seed: int
    total_timesteps: int
    updates: int
    hyperparameters: dict[str, Any]
    start_time: str
    end_time: str
    training_time_seconds: float
    steps_per_second: float | None
    first_update_seconds: float | None
    compile_seconds: float
    resumed_from_timestep: int | None
    final_metrics: dict[str, Any]
    evaluation: dict[str, Any] | None  # the final deterministic evaluation: mean, std, min, max, returns, seeds
    selected_checkpoint: dict[str, Any] | None
    evaluations_during_training: list[dict[str, Any]]
    solved: dict[str, Any]
    learning_progression: list[dict[str, Any]]
    artifacts: dict[str, Any]
    package_versions: dict[str, str]
    device: dict[str, str]
    success_criteria: dict[str, dict[str, Any]]
    reproducibility: dict[str, Any] | None = None  # after `reproduce`
    initialized_from: dict[str, Any] | None = None  # a run started from another's model (train --init-from)
    stop: str | None = None  # what stopped an interrupted run: "SIGINT", "SIGTERM" or "watch" (a tuning pruner)
    failure: str | None = None  # what failed a failed run: "numerical" (a non-finite update) or "write" (a file)

    @property
    def config(self) -> RunConfig:
        return make_config(self.algorithm, self.hyperparameters, source="results")

    @property
    def experiment_dir(self) -> Path:
        return Path(self.artifacts["experiment_dir"])

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for optional in ("reproducibility", "initialized_from", "stop", "failure"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Results":
        """The Results of a results JSON; ValueError naming what a damaged or edited file gets wrong (TypeError
        for a missing or unknown key)."""
        results = cls(**data)
        if results.status not in STATUSES:
            raise ValueError(f"status {shorten(results.status)} is not one of {', '.join(STATUSES)}")
        if results.stop not in (None, *STOPS) or results.failure not in (None, *FAILURES):
            raise ValueError(f"stop {shorten(results.stop)} or failure {shorten(results.failure)} is not one it"
                             " can be")
        for name in ("timestep", "total_timesteps", "updates"):
            value = getattr(results, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {shorten(value)}")
        evaluation = results.evaluation
        if results.status == "completed" and not (
                isinstance(evaluation, dict) and isinstance(evaluation.get("episodes"), int)
                and all(isinstance(evaluation.get(k), (int, float)) for k in ("mean", "std", "min", "max"))):
            raise ValueError("a completed run's evaluation must hold its episodes, mean, std, min and max")
        if not (isinstance(results.artifacts, dict) and isinstance(results.artifacts.get("experiment_dir"), str)
                and isinstance(results.artifacts.get("checkpoints"), list)):
            raise ValueError("artifacts must name the experiment_dir and list its checkpoints")
        return results

    @classmethod
    def load(cls, path: str | Path) -> "Results":
        return cls.from_dict(read_json(path))


def _criterion(description: str, value: Any, threshold: float | None, passed: bool | None) -> dict[str, Any]:
    return {"description": description, "value": value, "threshold": threshold, "passed": passed}


def reproducibility_criterion(std: float | None) -> dict[str, Any]:
    """SC-004: the std of the final evaluation return over two runs of the same seed (None: not measured)."""
    return _criterion("reproducible: std of the final evaluation return between two runs of the same seed < 0.01",
                      std, SC004_STD, None if std is None else std < SC004_STD)


def expected_checkpoints(config: RunConfig, reached: int, found: list[int]) -> list[int]:
    """The checkpoint steps a run that reached env step `reached` must have kept.

    One at the first vector step at or past each multiple of checkpoint_interval, and one at `reached`. A stop by
    a signal adds a checkpoint off that grid; it is not required, but with keep_checkpoints it counts among the
    newest N that are kept.
    """
    size = config.num_envs
    grid = {-(-m // size) * size for m in range(config.checkpoint_interval, reached + 1, config.checkpoint_interval)}
    grid = sorted(grid | {reached}) if reached else sorted(grid)
    if config.keep_checkpoints:
        return sorted(set(grid) | set(found))[-config.keep_checkpoints:]
    return grid


def build_results(config: RunConfig, paths: ExperimentPaths, recorder: MetricsRecorder, checkpoint_steps: list[int],
                  evaluation: dict[str, Any] | None, evaluations: list[dict[str, Any]], **run: Any) -> Results:
    """The Results of a run. `run` holds the rest of the fields that the run itself measured: status, reason,
    timestep, updates, start_time, end_time, training_time_seconds, steps_per_second, first_update_seconds,
    compile_seconds, resumed_from_timestep, selected_checkpoint, package_versions, device, initialized_from, stop,
    failure."""
    progression = [{"timestep": s, "reward": recorder.reward_at(s)} for s in checkpoint_steps]
    with_reward = [p["reward"] for p in progression if p["reward"] is not None]
    expected = expected_checkpoints(config, run["timestep"], checkpoint_steps)
    missing_steps = sorted(set(expected) - set(checkpoint_steps))
    artifacts = {
        "experiment_dir": str(paths.root),
        "model": paths.model.name,
        "metrics": paths.metrics.name,
        "results": paths.results.name,
        "checkpoints": [f"{paths.checkpoints.name}/{s}" for s in checkpoint_steps],
    }
    missing = [name for name in (artifacts["model"], artifacts["metrics"]) if not (paths.root / name).exists()]
    eval_mean = evaluation["mean"] if evaluation else None
    threshold = config.solve_threshold
    first_solve = next((e for e in evaluations if e["mean"] >= threshold), None)
    training_time = run["training_time_seconds"]
    criteria = {
        "SC-003": _criterion("training finishes in under 30 minutes", training_time, SC003_SECONDS,
                             training_time < SC003_SECONDS),
        "SC-004": reproducibility_criterion(None),
        "SC-005": _criterion(
            "every artifact present: model, metrics, results and one checkpoint per interval",
            {"checkpoints": len(checkpoint_steps), "expected_checkpoints": len(expected), "missing": missing,
             "missing_checkpoints": missing_steps},
            None, not missing and not missing_steps),
        "SC-006": _criterion(f"mean deterministic evaluation return > {threshold:g}", eval_mean, threshold,
                             None if eval_mean is None else eval_mean > threshold),
        "SC-008": _criterion(
            "learning progression: recent return at the last checkpoint above that at the first",
            {"first": with_reward[0] if with_reward else None, "last": with_reward[-1] if with_reward else None},
            None, len(with_reward) >= 2 and with_reward[-1] > with_reward[0]),
    }
    return Results(
        experiment_id=paths.name, algorithm=config.algo, environment=config.env_id, seed=config.seed,
        total_timesteps=config.total_timesteps, hyperparameters=config.to_dict(),
        final_metrics={**recorder.statistics(), "recent_reward_mean": recorder.recent_reward_mean},
        evaluation=evaluation, evaluations_during_training=evaluations,
        solved={"threshold": threshold, "timestep": first_solve["timestep"] if first_solve else None,
                "training_seconds": first_solve["training_seconds"] if first_solve else None},
        learning_progression=progression, artifacts=artifacts, success_criteria=criteria, **run,
    )


def previous_results(paths: ExperimentPaths) -> Results | None:
    """The results JSON of an experiment, or None when it has none; ResumeError when it is unreadable."""
    if not paths.results.is_file():
        return None
    try:
        return Results.load(paths.results)
    except (OSError, ValueError, TypeError) as exc:
        raise ResumeError(f"results file {paths.results} is unreadable ({first_line(exc)})") from None
