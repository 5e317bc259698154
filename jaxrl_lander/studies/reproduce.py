"""SC-004: train the same experiment twice and compare everything that should be identical."""

import dataclasses
import logging
import signal
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrl_lander.storage.model import load_model
from jaxrl_lander.storage.claim import ExperimentLock
from jaxrl_lander.config import RunConfig
from jaxrl_lander.config.errors import Interrupted
from jaxrl_lander.training.run import train
from jaxrl_lander.storage.files import ExperimentPaths, check_results_dir, read_json, write_json_atomic
from jaxrl_lander.storage.results import Results, reproducibility_criterion

log = logging.getLogger("jaxrl_lander")


def _without_times(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "records": [{k: v for k, v in r.items() if k != "timestamp"} for r in metrics["records"]],
        "episodes": metrics["episodes"],
        "statistics": metrics["statistics"],
    }


def _completed(results: Results) -> Results:
    """`results`, or Interrupted when a signal stopped the run: there is nothing to compare then."""
    if results.status == "interrupted":
        raise Interrupted(signal.Signals[results.stop], f"{results.experiment_id}: {results.reason}; no reproducibility check was made")
    return results


def reproduce(config: RunConfig, results_dir: str | Path = "results", overwrite: bool = False) -> Results:
    """Train `config` into results_dir and once more into a scratch directory, then record SC-004.

    The verdict goes into the first run's results JSON: the std of the final evaluation return over the two
    runs (target < 0.01; 0.0 when the runs are identical) and whether parameters and metrics are identical.
    An existing experiment is refused unless `overwrite`. The experiment stays claimed (its lock) from the first
    run to the verdict's write: no other command changes it in between.
    """
    check_results_dir(results_dir)
    with ExperimentLock(ExperimentPaths.of(results_dir, config)) as claim:
        first = _completed(train(config, results_dir, overwrite=overwrite, claim=claim))
        with tempfile.TemporaryDirectory(dir=results_dir, prefix=".reproduce-") as scratch:
            log.info("second run of %s for the reproducibility check", first.experiment_id)
            second = _completed(train(config, scratch))
            paths = [ExperimentPaths.at(r.experiment_dir) for r in (first, second)]
            metrics = [_without_times(read_json(p.metrics)) for p in paths]
            params = [load_model(p.model)[0] for p in paths]
        return _record(first, second, paths[0], metrics, params)


def _record(first: Results, second: Results, paths: ExperimentPaths, metrics: list[dict], params: list) -> Results:
    """SC-004 from the two runs, written into the first run's results JSON."""
    same_params = all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), *params)))
    eval_means = [r.evaluation["mean"] for r in (first, second)]
    std = float(np.std(eval_means))
    verdict = {
        "runs": 2,
        "evaluation_means": eval_means,
        "final_training_rewards": [r.final_metrics["recent_reward_mean"] for r in (first, second)],
        "evaluation_mean_std": std,
        "params_identical": same_params,
        "metrics_identical": metrics[0] == metrics[1],
    }
    updated = dataclasses.replace(first, reproducibility=verdict,
                                  success_criteria={**first.success_criteria, "SC-004": reproducibility_criterion(std)})
    write_json_atomic(paths.results, updated.to_dict())
    return updated
