"""Actor-critic shapes, Stable-Baselines3's orthogonal initialisation, and the two action distributions against
hand-computed values (jitted and not)."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lander.core.policy import (
    ActorCritic,
    Categorical,
    DiagGaussian,
    env_action,
    greedy_action,
    sample_action,
    sample_env_action,
)


def _params():
    policy = ActorCritic(action_size=4)
    return policy, policy.init(jax.random.key(0), jnp.zeros((1, 8)))


def test_shapes_and_dtypes():
    policy, params = _params()
    dist, values = policy.apply(params, jnp.zeros((5, 8)))
    chex.assert_shape(dist.logits, (5, 4))
    chex.assert_shape(values, (5,))
    dist, values = policy.apply(params, jnp.zeros((3, 7, 8)))  # time-major rollouts
    chex.assert_shape([dist.logits, values], [(3, 7, 4), (3, 7)])
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
    dist = policy.apply(params, obs, method=ActorCritic.distribution)
    np.testing.assert_allclose(dist.entropy(), np.log(4), atol=1e-2)


def test_log_prob_greedy_and_sampling_statistics():
    policy, params = _params()
    dist = Categorical(jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]])))
    np.testing.assert_allclose(dist.log_prob(jnp.array([2])), np.log(0.3), rtol=1e-6)
    np.testing.assert_allclose(dist.entropy(), -np.sum([p * np.log(p) for p in (0.1, 0.2, 0.3, 0.4)]), rtol=1e-6)
    obs = jnp.zeros((4000, 8))
    greedy = greedy_action(policy, params, obs)
    assert len(set(np.asarray(greedy).tolist())) == 1  # the same obs gives the same argmax
    actions, _ = sample_action(policy, params, obs, jax.random.key(3))
    freq = np.bincount(np.asarray(actions), minlength=4) / 4000
    np.testing.assert_allclose(freq, 0.25, atol=0.03)  # near-uniform initial policy samples every action


def _continuous():
    policy = ActorCritic(action_size=2, continuous=True)
    return policy, policy.init(jax.random.key(0), jnp.zeros((1, 8)))


def test_continuous_policy_has_a_state_independent_log_std_starting_at_zero():
    policy, params = _continuous()
    p = params["params"]
    assert set(p) == {"actor", "critic", "log_std"}
    np.testing.assert_array_equal(p["log_std"], np.zeros(2, np.float32))
    dist, values = policy.apply(params, jax.random.normal(jax.random.key(1), (3, 7, 8)))
    chex.assert_shape([dist.mean, dist.log_std, values], [(3, 7, 2), (2,), (3, 7)])
    assert policy.action_shape == (2,) and policy.action_dtype == jnp.float32
    assert ActorCritic(action_size=4).action_shape == ()


class TestDiagGaussian(chex.TestCase):
    """log N(a; mu, sigma^2) summed over the action's dimensions, and its entropy, by hand."""

    MEAN = np.array([[0.5, -1.0], [0.0, 2.0]], np.float32)
    LOG_STD = np.array([np.log(0.5), np.log(2.0)], np.float32)
    ACTIONS = np.array([[1.0, 0.0], [-0.5, 2.0]], np.float32)

    @chex.all_variants(with_pmap=False)
    def test_log_prob_and_entropy_by_hand(self):
        def both(mean, log_std, actions):
            dist = DiagGaussian(mean, log_std)
            return dist.log_prob(actions), dist.entropy()

        log_p, ent = self.variant(both)(self.MEAN, self.LOG_STD, self.ACTIONS)
        sigma = np.exp(self.LOG_STD.astype(np.float64))
        z = (self.ACTIONS - self.MEAN) / sigma
        # first row: z = (1.0, 0.5); second: z = (-1.0, 0.0)
        np.testing.assert_allclose(z, [[1.0, 0.5], [-1.0, 0.0]])
        expected = np.sum(-0.5 * z**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi), axis=-1)
        np.testing.assert_allclose(log_p, expected, rtol=1e-6)
        # by hand: row 0 = -0.5 - 0.125 - log 0.5 - log 2 - log(2 pi) = -0.625 - log(2 pi)
        np.testing.assert_allclose(log_p[0], -0.625 - np.log(2 * np.pi), rtol=1e-6)
        np.testing.assert_allclose(ent, [np.log(0.5) + np.log(2.0) + 1 + np.log(2 * np.pi)] * 2, rtol=1e-6)

    @chex.all_variants(with_pmap=False)
    def test_sample_statistics_and_mode(self):
        dist = DiagGaussian(jnp.broadcast_to(jnp.array([0.3, -0.2]), (20000, 2)), jnp.array([0.0, np.log(0.1)]))
        samples = np.asarray(self.variant(lambda d, k: d.sample(k))(dist, jax.random.key(4)))
        np.testing.assert_allclose(samples.mean(0), [0.3, -0.2], atol=0.03)
        np.testing.assert_allclose(samples.std(0), [1.0, 0.1], rtol=0.03)
        np.testing.assert_array_equal(self.variant(lambda d: d.mode())(dist), dist.mean)


def test_continuous_actions_learn_as_sampled_and_reach_the_env_clipped():
    """The losses see the unclipped sample (its log-prob is the Gaussian's); the env and every act path get it
    clipped to [-1, 1], with the same key giving the same draw."""
    policy, params = _continuous()
    obs, key = jnp.zeros((4000, 8)), jax.random.key(5)
    raw, next_key = sample_action(policy, params, obs, key)
    played, played_key = sample_env_action(policy, params, obs, key)
    chex.assert_shape([raw, played], (4000, 2))
    assert np.abs(np.asarray(raw)).max() > 1.5  # std 1 at the start: samples beyond the bounds
    np.testing.assert_array_equal(played, np.clip(raw, -1.0, 1.0))
    np.testing.assert_array_equal(jax.random.key_data(next_key), jax.random.key_data(played_key))
    greedy = greedy_action(policy, params, obs)
    mean = policy.apply(params, obs, method=ActorCritic.distribution).mean
    np.testing.assert_array_equal(greedy, np.clip(mean, -1.0, 1.0))
    discrete = jnp.array([0, 3, 1], jnp.int32)
    assert env_action(ActorCritic(action_size=4), discrete) is discrete  # discrete actions pass as they are
