"""Both algorithms learn probe envs whose answers are known in closed form.

These catch sign errors and off-by-ones (in GAE, bootstrapping, the losses) that a LunarLander run hides.
"""

import numpy as np
import probe_envs  # noqa: F401  (registers the probe envs)
import pytest
from helpers import Run, train_run

from jaxrl_lander import load_policy
from jaxrl_lander.config import make_config

GAMMA = 0.9
# Small, fast settings: probes test signs and targets, not sample efficiency.
PROBE_CONFIG = {
    "ppo": {"num_envs": 8, "n_steps": 16, "batch_size": 32, "n_epochs": 4, "learning_rate": 1e-3,
            "total_timesteps": 128 * 150},
    "a2c": {"num_envs": 8, "n_steps": 5, "learning_rate": 3e-3, "total_timesteps": 40 * 400},
}


def train_probe(algo: str, env: str, tmp_path, ent_coef: float = 0.0) -> Run:
    config = make_config(algo, {
        **PROBE_CONFIG[algo], "env_id": f"JaxrlLanderTest/{env}-v0", "gamma": GAMMA, "gae_lambda": 0.95,
        "ent_coef": ent_coef, "checkpoint_interval": 10**9, "eval_episodes": 20,
    })
    return train_run(config, tmp_path)


def values(run: Run, obs: list[float]) -> np.ndarray:
    """The trained critic's V(s) of one-dimensional observations."""
    return load_policy(run.paths.root).value(np.array(obs, np.float32)[:, None])


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_one_step_value_is_the_reward(algo, tmp_path):
    run = train_probe(algo, "OneStep", tmp_path)
    np.testing.assert_allclose(values(run, [0.0]), [1.0], atol=0.1)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_two_step_values_are_discounted(algo, tmp_path):
    run = train_probe(algo, "TwoStep", tmp_path)
    np.testing.assert_allclose(values(run, [0.0, 1.0]), [GAMMA, 1.0], atol=0.1)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_best_action_depends_on_the_observation(algo, tmp_path):
    run = train_probe(algo, "MatchSign", tmp_path)
    assert run.results.evaluation["mean"] == 1.0  # every greedy evaluation episode answers right
    np.testing.assert_allclose(values(run, [-1.0, 1.0]), [1.0, 1.0], atol=0.15)
