"""train --init-from: a new experiment starts from another one's delivered parameters and normaliser statistics,
with a fresh optimiser, and says so in its results; what cannot start from them is refused up front."""

import jax
import numpy as np
import pytest
from helpers import load_json, template_state, train_run, validate

from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.storage.model import load_model
from jaxrl_lander.config import make_config
from jaxrl_lander.config.errors import ConfigError
from jaxrl_lander.storage.schemas import EXPERIMENT_RESULTS

NORMALISED = {"normalize_observations": True, "normalize_rewards": True}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 400-step A2C run with both normalisations (checkpoints at 200 and 400): the model to start from."""
    config = make_config("a2c", {"total_timesteps": 400, "checkpoint_interval": 200, "eval_episodes": 1,
                                 "seed": 7, **NORMALISED})
    return train_run(config, tmp_path_factory.mktemp("source"))


def test_the_new_run_starts_from_the_models_parameters_and_statistics(source, tmp_path):
    # PPO's first update comes after 2,048 steps: its checkpoint at 200 holds the parameters it started from.
    config = make_config("ppo", {"total_timesteps": 2048, "checkpoint_interval": 200, "eval_episodes": 1,
                                 "learning_rate": 1e-4, **NORMALISED})
    run = train_run(config, tmp_path, init_from=source.paths.root)
    store = CheckpointStore(run.paths.checkpoints)
    state, meta = store.restore(200, template_state(config))
    store.close()
    source_params, spec = load_model(source.paths.model)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), state.params, source_params)
    assert all(jax.tree.leaves(same))
    # The statistics go on from the source's: its model's observations, its checkpoint's rewards at step 400.
    source_meta = CheckpointStore(source.paths.checkpoints).run_metadata(400)["normalizer"]
    start_count = spec.observation_normalization["count"]
    assert start_count == source_meta["observations"]["count"]
    assert meta["normalizer"]["observations"]["count"] == pytest.approx(start_count + 8 + 25 * 8)  # reset + 25 steps
    assert meta["normalizer"]["returns"]["count"] == pytest.approx(source_meta["returns"]["count"] + 25 * 8)
    record = {"model": str(source.paths.model), "algorithm": "a2c", "seed": 7, "timestep": 400,
              "env_id": "LunarLander-v3", "reward_statistics": True}
    assert run.results.initialized_from == meta["initialized_from"] == record
    saved = load_json(run.paths.results)
    assert saved["initialized_from"] == record
    validate(saved, EXPERIMENT_RESULTS)


def test_a_resumed_run_keeps_what_it_started_from(source, tmp_path):
    config = make_config("a2c", {"total_timesteps": 200, "checkpoint_interval": 200, "eval_episodes": 1,
                                 **NORMALISED})
    first = train_run(config, tmp_path, init_from=source.paths.model)
    more = train_run(make_config("a2c", {**config.to_dict(), "total_timesteps": 400}), tmp_path, resume=True)
    assert more.results.resumed_from_timestep == 200
    assert more.results.initialized_from == first.results.initialized_from
    assert first.results.initialized_from["model"] == str(source.paths.model)


@pytest.mark.parametrize("changes,message", [
    ({"normalize_observations": False, "normalize_rewards": False}, "its policy standardises its observations"),
    ({"hidden_size": 32}, "its network has hidden_size 64, the config 32"),
])
def test_what_cannot_start_from_the_model_is_refused_with_nothing_written(source, tmp_path, changes, message):
    config = make_config("a2c", {"total_timesteps": 400, **NORMALISED, **changes})
    with pytest.raises(ConfigError, match=message):
        train_run(config, tmp_path, init_from=source.paths.root)
    assert list(tmp_path.iterdir()) == []
