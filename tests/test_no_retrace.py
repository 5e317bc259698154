"""The jitted act and update compile once and never retrace across real LunarLander rollouts."""

from functools import partial

import chex
import jax
import numpy as np
import pytest

from jaxrl_lander.algos.common import init_state, make_learner
from jaxrl_lander.config import make_config
from jaxrl_lander.envs import make_vector_env, step_envs
from jaxrl_lander.policy import sample_action, state_value
from jaxrl_lander.rollout import RolloutBuffer


@pytest.mark.parametrize("algo,n_steps", [("ppo", 16), ("a2c", 5)])
def test_act_and_update_trace_once(algo, n_steps):
    chex.clear_trace_counter()
    config = make_config(algo, {"num_envs": 4, "n_steps": n_steps, "batch_size": 16} if algo == "ppo"
                         else {"num_envs": 4})
    learner = make_learner(config, num_actions=4, wrap=partial(chex.assert_max_traces, n=1))
    def act_fn(params, obs, key):
        return sample_action(learner.policy, params, obs, key)

    act = jax.jit(chex.assert_max_traces(act_fn, n=1))
    value = jax.jit(partial(state_value, learner.policy))
    state = init_state(policy=learner.policy, tx=learner.tx, key=jax.random.key(0), obs_dim=8)
    envs = make_vector_env("LunarLander-v3", config.num_envs)
    obs, _ = envs.reset(seed=0)
    buffer = RolloutBuffer(config.n_steps, config.num_envs, 8)
    key = state.key
    losses = []
    for _ in range(3):
        for _ in range(config.n_steps):
            actions, key = act(state.params, obs, key)
            out = step_envs(envs, np.asarray(actions), lambda o: value(state.params, o), config.gamma)
            buffer.add(obs, np.asarray(actions), out.rewards, out.dones)
            obs = out.obs
        state, metrics = learner.update(state.replace(key=key), buffer.rollout(obs))
        key = state.key
        losses.append(float(metrics["loss"]))
    envs.close()
    assert len(set(losses)) == 3 and all(np.isfinite(losses))  # three real, different updates ran
