"""Shared by the diagnostic scripts: the learner of a finished experiment, and one of its checkpoints."""

from pathlib import Path

import jax

from jaxrl_lander.core.algos import Learner, TrainState, make_learner
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.training.collect import env_dims
from jaxrl_lander.config import RunConfig
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.storage.files import ExperimentPaths
from jaxrl_lander.storage.results import Results


def experiment_learner(experiment: Path) -> tuple[RunConfig, Learner, Results]:
    """(config, learner, results) of the experiment in `experiment`, as its run built them."""
    results = Results.load(ExperimentPaths.at(experiment).results)
    config = results.config
    envs = EnvChoice.of(config).make_vector(1)
    learner = make_learner(config, *env_dims(envs))
    envs.close()
    return config, learner, results


def restore_checkpoint(experiment: Path, learner: Learner, step: int) -> tuple[TrainState, dict]:
    """(train state, metadata) of the experiment's checkpoint at `step`."""
    store = CheckpointStore(ExperimentPaths.at(experiment).checkpoints)
    try:
        return store.restore(step, learner.init(jax.random.key(0)))
    finally:
        store.close()
