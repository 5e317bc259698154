"""The continuous lander (LunarLanderContinuous-v3, a Gaussian policy) trained for real on both backends: its
artifacts, its actions as the Python API gives them, and its checkpoints resumed."""

import jax
import numpy as np
import pytest
from conftest import once_per_run
from helpers import interrupted_copy, load_json, same_params, train_run, validate, without_times

from jaxrl_lander import load_policy
from jaxrl_lander.config import make_config
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.storage.files import ExperimentPaths
from jaxrl_lander.storage.model import load_model
from jaxrl_lander.storage.schemas import EXPERIMENT_RESULTS, TRAINING_METRICS

STEPS = 1_536  # three rollouts of 8 x 64: a checkpoint in each


def continuous_config(algo: str, backend: str):
    small = {"batch_size": 128, "n_epochs": 2} if algo == "ppo" else {}
    return make_config(algo, {"env_id": "LunarLanderContinuous-v3", "env_backend": backend, "total_timesteps": STEPS,
                              "num_envs": 8, "n_steps": 64, "checkpoint_interval": 512, "eval_episodes": 3, **small})


CASES = [pytest.param("ppo", "gymnasium"), pytest.param("a2c", "gymnasium"),
         pytest.param("ppo", "envpool", marks=pytest.mark.needs("envpool"))]


@pytest.fixture(scope="session")
def continuous_runs(tmp_path_factory):
    """One short continuous run per case, trained once per run of the suite: {(algo, backend): its directory}."""
    def build(directory):
        for algo, backend in (case.values for case in CASES):
            if backend == "envpool" and not _has_envpool():
                continue
            train_run(continuous_config(algo, backend), directory / f"{algo}_{backend}")

    root = once_per_run(tmp_path_factory, "continuous_runs", build)
    return {(algo, backend): root / f"{algo}_{backend}" for algo, backend in (case.values for case in CASES)}


def _has_envpool() -> bool:
    import importlib.util

    return importlib.util.find_spec("envpool") is not None


def _paths(results_dir, config) -> ExperimentPaths:
    (root,) = [p for p in (results_dir / "experiments").iterdir() if p.is_dir()]  # the one, whatever its name
    return ExperimentPaths.at(root)


@pytest.mark.parametrize("algo,backend", CASES)
def test_a_continuous_run_leaves_the_whole_artifact_set_and_a_policy_of_real_actions(continuous_runs, algo, backend):
    config = continuous_config(algo, backend)
    paths = _paths(continuous_runs[algo, backend], config)
    results, metrics = load_json(paths.results), load_json(paths.metrics)
    validate(results, EXPERIMENT_RESULTS)
    validate(metrics, TRAINING_METRICS)
    assert results["hyperparameters"]["env_id"] == "LunarLanderContinuous-v3"
    assert results["timestep"] == STEPS and len(results["evaluation"]["returns"]) == 3
    assert CheckpointStore(paths.checkpoints).all_steps() == [512, 1024, STEPS]
    assert metrics["episodes"], "no training episode ended"
    params, spec = load_model(paths.model)
    assert spec.env_id == "LunarLanderContinuous-v3" and spec.num_actions == 2
    assert params["params"]["log_std"].shape == (2,)
    assert not np.array_equal(params["params"]["log_std"], np.zeros(2))  # the log-std was learned

    policy = load_policy(paths.root)
    obs = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    actions = policy(obs)
    assert actions.shape == (256, 2) and actions.dtype == np.float32
    assert np.abs(actions).max() <= 1.0 and len(np.unique(actions)) > 2
    sampled = policy(obs, deterministic=False, seed=7)
    assert sampled.shape == (256, 2) and np.abs(sampled).max() <= 1.0
    np.testing.assert_array_equal(sampled, policy(obs, deterministic=False, key=jax.random.key(7)))
    assert not np.array_equal(sampled, policy(obs, deterministic=False, seed=8))
    assert (np.abs(sampled) == 1.0).any()  # std near 1: some draws beyond the bounds, clipped for the env


@pytest.mark.slow
@pytest.mark.parametrize("algo,backend", CASES)
def test_a_continuous_run_killed_after_a_checkpoint_resumes_to_the_same_updates(continuous_runs, tmp_path, algo,
                                                                                 backend):
    """Two copies of a run as a kill after its first checkpoint leaves it resume to the same metrics and
    parameters, with every checkpoint of the grid."""
    config = continuous_config(algo, backend)
    finished = _paths(continuous_runs[algo, backend], config)
    outcomes = []
    for copy in ("a", "b"):
        results_dir = tmp_path / copy
        interrupted_copy(finished.root, results_dir / "experiments" / finished.root.name, keep_up_to=512)
        resumed = train_run(config, results_dir, resume=True)
        assert resumed.results.resumed_from_timestep == 512
        paths = _paths(results_dir, config)
        assert CheckpointStore(paths.checkpoints).all_steps() == [512, 1024, STEPS]
        outcomes.append((without_times(load_json(paths.metrics)), load_model(paths.model)[0]))
    assert outcomes[0][0] == outcomes[1][0]
    same_params(outcomes[0][1], outcomes[1][1])


def test_log_std_init_sets_the_starting_log_std_and_nothing_else():
    from jaxrl_lander.core.algos import make_learner

    def fresh(**keys):
        config = make_config("a2c", {"env_id": "LunarLanderContinuous-v3", **keys})
        return make_learner(config, 8, 2, continuous=True).init(jax.random.key(3)).params["params"]

    default, lowered = fresh(), fresh(log_std_init=-2.0)
    np.testing.assert_array_equal(default["log_std"], np.zeros(2, np.float32))
    np.testing.assert_array_equal(lowered["log_std"], np.full(2, -2.0, np.float32))
    same_params({k: v for k, v in default.items() if k != "log_std"},
                {k: v for k, v in lowered.items() if k != "log_std"})


def test_a_run_started_from_a_model_refuses_a_log_std_init_it_would_not_use(continuous_runs):
    from jaxrl_lander.config import ENV_IDS, ConfigError
    from jaxrl_lander.training.starting_point import load_starting_point

    config = continuous_config("a2c", "gymnasium")
    source = _paths(continuous_runs["a2c", "gymnasium"], config).root
    assert load_starting_point(source, config, ENV_IDS[config.env_id]).params is not None
    lowered = make_config("a2c", {**config.to_dict(), "log_std_init": -2.0})
    with pytest.raises(ConfigError, match="starts where the model's is, not at log_std_init -2.0"):
        load_starting_point(source, lowered, ENV_IDS[config.env_id])
