"""Shared by the diagnostic scripts: restore one checkpoint of a finished experiment."""

import json
import tempfile
from pathlib import Path

from jaxrl_lander.checkpoint import CheckpointStore
from jaxrl_lander.config import RunConfig, make_config
from jaxrl_lander.train import Trainer


def restore_checkpoint(experiment: Path, step: int) -> tuple[RunConfig, Trainer, object]:
    """(config, trainer, train state at `step`); the trainer's normaliser, if the config has one, holds the
    statistics of that checkpoint. The caller closes trainer.envs."""
    results = json.loads(next(experiment.glob("*_results.json")).read_text())
    config = make_config(results["algorithm"], results["hyperparameters"], source="results JSON")
    with tempfile.TemporaryDirectory() as scratch:  # the Trainer's results directory; nothing is written there
        trainer = Trainer(config, scratch)
    store = CheckpointStore(experiment / "checkpoints")
    try:
        state, meta = store.restore(step, trainer.initial_state())
    finally:
        store.close()
    if trainer.normalizer is not None:
        trainer.normalizer.load_state_dict(meta["normalizer"])
    return config, trainer, state
