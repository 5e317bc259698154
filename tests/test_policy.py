"""Actor-critic shapes and Stable-Baselines3's orthogonal initialisation."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lander.core.policy import ActorCritic, entropy, greedy_action, log_prob, sample_action


def _params():
    policy = ActorCritic(num_actions=4)
    return policy, policy.init(jax.random.key(0), jnp.zeros((1, 8)))


def test_shapes_and_dtypes():
    policy, params = _params()
    logits, values = policy.apply(params, jnp.zeros((5, 8)))
    chex.assert_shape(logits, (5, 4))
    chex.assert_shape(values, (5,))
    logits, values = policy.apply(params, jnp.zeros((3, 7, 8)))  # time-major rollouts
    chex.assert_shape([logits, values], [(3, 7, 4), (3, 7)])
    actions, key = jax.jit(partial(sample_action, policy))(params, jnp.zeros((6, 8)), jax.random.key(1))
    chex.assert_shape(actions, (6,))
    chex.assert_type(actions, jnp.int32)
    assert jax.random.key_data(key).shape == (2,)


def test_separate_networks_with_orthogonal_init():
    _, params = _params()
    p = params["params"]
    assert set(p) == {"actor", "critic"}  # no shared trunk
    for net, head_gain, out in (("actor", 0.01, 4), ("critic", 1.0, 1)):
        layers = p[net]
        assert [layers[k]["kernel"].shape for k in sorted(layers)] == [(8, 64), (64, 64), (64, out)]
        for k in layers:
            np.testing.assert_array_equal(layers[k]["bias"], 0.0)
        hidden = np.asarray(layers["Dense_1"]["kernel"])  # square: W^T W = gain^2 I with gain sqrt 2
        np.testing.assert_allclose(hidden.T @ hidden, 2.0 * np.eye(64), atol=1e-4)
        head = np.asarray(layers["Dense_2"]["kernel"])  # (64, out): orthonormal columns times the gain
        np.testing.assert_allclose(head.T @ head, head_gain**2 * np.eye(out), atol=1e-6)


def test_initial_policy_is_near_uniform():
    policy, params = _params()
    obs = jax.random.normal(jax.random.key(2), (100, 8))
    logits = policy.apply(params, obs, method=ActorCritic.logits)
    np.testing.assert_allclose(entropy(logits), np.log(4), atol=1e-2)


def test_log_prob_greedy_and_sampling_statistics():
    policy, params = _params()
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    np.testing.assert_allclose(log_prob(logits, jnp.array([2])), np.log(0.3), rtol=1e-6)
    np.testing.assert_allclose(entropy(logits), -np.sum([p * np.log(p) for p in (0.1, 0.2, 0.3, 0.4)]), rtol=1e-6)
    obs = jnp.zeros((4000, 8))
    greedy = greedy_action(policy, params, obs)
    assert len(set(np.asarray(greedy).tolist())) == 1  # the same obs gives the same argmax
    actions, _ = sample_action(policy, params, obs, jax.random.key(3))
    freq = np.bincount(np.asarray(actions), minlength=4) / 4000
    np.testing.assert_allclose(freq, 0.25, atol=0.03)  # near-uniform initial policy samples every action
