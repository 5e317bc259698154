"""GAE against numbers worked out by hand, compiled and not."""

import chex
import jax.numpy as jnp
import numpy as np

from jaxrl_lander.core.algos.base import gae


class GaeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed_two_envs_with_an_episode_end(self):
        # T = 3 steps, B = 2 envs; env 0's episode ends after step 1 (t = 1).
        rewards = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, -1.0]])
        values = jnp.array([[0.5, 1.0], [1.0, 2.0], [2.0, 0.0]])
        dones = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
        last_value = jnp.array([4.0, 3.0])
        gamma, lam = 0.5, 0.5

        # env 0: delta_2 = 3 + .5*4 - 2 = 3; delta_1 = 2 + 0 - 1 = 1 (done); delta_0 = 1 + .5*1 - .5 = 1
        #        A_2 = 3; A_1 = 1 (done cuts the trace); A_0 = 1 + .25*1 = 1.25
        # env 1: delta_2 = -1 + .5*3 - 0 = .5; delta_1 = 1 + .5*0 - 2 = -1; delta_0 = 0 + .5*2 - 1 = 0
        #        A_2 = .5; A_1 = -1 + .25*.5 = -.875; A_0 = 0 + .25*-.875 = -.21875
        expected_adv = np.array([[1.25, -0.21875], [1.0, -0.875], [3.0, 0.5]])

        advantages, returns = self.variant(gae)(rewards, values, dones, last_value, gamma, lam)
        chex.assert_shape([advantages, returns], (3, 2))
        np.testing.assert_allclose(advantages, expected_adv, rtol=1e-6)
        np.testing.assert_allclose(returns, expected_adv + np.asarray(values), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_lambda_one_gives_discounted_returns_minus_values(self):
        rewards = jnp.array([[1.0], [1.0], [1.0]])
        values = jnp.array([[0.3], [0.2], [0.1]])
        dones = jnp.zeros((3, 1))
        last_value = jnp.array([10.0])
        _, returns = self.variant(gae)(rewards, values, dones, last_value, 0.9, 1.0)
        # Monte-Carlo return bootstrapped with last_value: R_0 = 1 + .9 + .81 + .729 * 10
        np.testing.assert_allclose(returns[:, 0], [1 + 0.9 + 0.81 + 7.29, 1 + 0.9 + 8.1, 1 + 9.0], rtol=1e-6)

    def test_rejects_mismatched_ranks(self):
        with self.assertRaises(AssertionError):
            gae(jnp.zeros((3,)), jnp.zeros((3, 1)), jnp.zeros((3, 1)), jnp.zeros((1,)), 0.9, 0.9)
