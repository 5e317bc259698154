"""SC-004: train the same experiment twice and compare everything that should be identical."""

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrl_lander.checkpoint import load_model
from jaxrl_lander.config import RunConfig
from jaxrl_lander.recording import write_json_atomic
from jaxrl_lander.train import Trainer

log = logging.getLogger("jaxrl_lander")


def _load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _without_times(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "records": [{k: v for k, v in r.items() if k != "timestamp"} for r in metrics["records"]],
        "episodes": metrics["episodes"],
        "statistics": metrics["statistics"],
    }


def reproduce(config: RunConfig, results_dir: str | Path = "results") -> dict[str, Any]:
    """Train `config` into results_dir and once more into a scratch directory, then record SC-004.

    The verdict goes into the first run's results JSON: the std of the final evaluation return over the two
    runs (target < 0.01; 0.0 when the runs are identical) and whether parameters and metrics are identical.
    """
    first = Trainer(config, results_dir)
    first.train()
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=results_dir, prefix=".reproduce-") as scratch:
        log.info("second run of %s for the reproducibility check", first.paths.name)
        second = Trainer(config, scratch)
        second.train()
        runs = [first.paths, second.paths]
        results = [_load(p.results) for p in runs]
        metrics = [_without_times(_load(p.metrics)) for p in runs]
        params = [load_model(p.model)[0] for p in runs]
    same_params = all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), *params)))
    eval_means = [r["evaluation"]["mean"] for r in results]
    final_rewards = [r["final_metrics"]["recent_reward_mean"] for r in results]
    std = float(np.std(eval_means))
    verdict = {
        "runs": 2,
        "evaluation_means": eval_means,
        "final_training_rewards": final_rewards,
        "evaluation_mean_std": std,
        "params_identical": same_params,
        "metrics_identical": metrics[0] == metrics[1],
    }
    updated = results[0]
    updated["reproducibility"] = verdict
    updated["success_criteria"]["SC-004"] = {
        "description": "reproducible: std of the final evaluation return between two runs of the same seed < 0.01",
        "value": std,
        "threshold": 0.01,
        "passed": std < 0.01,
    }
    write_json_atomic(first.paths.results, updated)
    return updated
