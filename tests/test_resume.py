"""A resume continues the same learning: the rollout in progress is part of every checkpoint, so a run killed at
any point performs the same number of updates over the same number of transitions as one never interrupted."""

import jax
import numpy as np

from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.training.collect import HostCollector
from jaxrl_lander.config import make_config
from jaxrl_lander.envs.gymnasium import make_vector_env
from jaxrl_lander.core.policy import state_value
from jaxrl_lander.training.runtime import Devices


def test_a_resumed_rollout_cuts_its_last_transition_like_a_time_limit():
    config = make_config("a2c", {"num_envs": 2, "n_steps": 5})
    envs = make_vector_env(config.env_id, config.num_envs)
    learner = make_learner(config, 8, 4)
    state = learner.init(jax.random.key(0))
    collector = HostCollector(envs, learner, config, Devices.resolve())
    collector.start([0])
    rng = np.random.default_rng(0)
    arrays = {"obs": rng.normal(size=(5, 2, 8)).astype(np.float32), "actions": np.ones((5, 2), np.int32),
              "rewards": np.full((5, 2), 2.0, np.float32), "dones": np.zeros((5, 2), np.float32),
              "next_obs": rng.normal(size=(2, 8)).astype(np.float32)}
    arrays["dones"][2, 1] = 1.0  # sub-env 1's episode ended right at the cut: nothing to bootstrap
    collector.resume_pending(state, {k: v.copy() for k, v in arrays.items()}, filled=3)

    buffer = collector.buffer
    value = np.asarray(state_value(learner.network, state.params, arrays["next_obs"]))
    assert buffer.pos == 3
    np.testing.assert_allclose(buffer.rewards[2], [2.0 + config.gamma * value[0], 2.0], rtol=1e-6)
    np.testing.assert_array_equal(buffer.dones[2], [1.0, 1.0])
    np.testing.assert_array_equal(buffer.rewards[:2], arrays["rewards"][:2])  # earlier steps as collected
    np.testing.assert_array_equal(buffer.obs[:3], arrays["obs"][:3])
    collector.close()


# A run killed mid-rollout and resumed makes the updates of an uninterrupted one: test_crash_safety.py (five
# kills), and make soak (twenty).
