"""Host-side rollout buffer (preallocated numpy) and generalised advantage estimation (jitted)."""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np


class Rollout(NamedTuple):
    """One rollout of T vector steps over B sub-envs, as fed to an update."""

    obs: jax.Array  # (T, B, obs_dim) observation each action was taken in
    actions: jax.Array  # (T, B) int32
    rewards: jax.Array  # (T, B) float32, time-limit bootstrap already added
    dones: jax.Array  # (T, B) float32, 1.0 where the episode ended after this step
    last_obs: jax.Array  # (B, obs_dim) observation after the last step, for the bootstrap value


class RolloutBuffer:
    """Preallocated numpy arrays filled one vector step at a time."""

    def __init__(self, n_steps: int, num_envs: int, obs_dim: int):
        self.obs = np.zeros((n_steps, num_envs, obs_dim), np.float32)
        self.actions = np.zeros((n_steps, num_envs), np.int32)
        self.rewards = np.zeros((n_steps, num_envs), np.float32)
        self.dones = np.zeros((n_steps, num_envs), np.float32)
        self.n_steps = n_steps
        self.pos = 0

    def add(self, obs, actions, rewards, dones) -> None:
        t = self.pos
        self.obs[t] = obs
        self.actions[t] = actions
        self.rewards[t] = rewards
        self.dones[t] = dones
        self.pos += 1

    @property
    def full(self) -> bool:
        return self.pos == self.n_steps

    def rollout(self, last_obs: np.ndarray, device: jax.Device | None = None) -> Rollout:
        """The filled rollout as arrays on `device` (one transfer per update); empties the buffer."""
        assert self.full, "rollout requested before the buffer is full"
        self.pos = 0
        return Rollout(*jax.device_put((self.obs, self.actions, self.rewards, self.dones, last_obs), device))


@jax.jit
def gae(
    rewards: jax.Array, values: jax.Array, dones: jax.Array, last_value: jax.Array, gamma, gae_lambda
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimates and value targets.

    delta_t = r_t + gamma * (1 - d_t) * v_{t+1} - v_t
    A_t     = delta_t + gamma * lambda * (1 - d_t) * A_{t+1}
    R_t     = A_t + v_t
    with v_T = last_value. Inputs are time-major (T, B); last_value is (B,). Returns (advantages, returns).
    """
    chex.assert_rank([rewards, values, dones, last_value], [2, 2, 2, 1])
    chex.assert_equal_shape([rewards, values, dones])
    not_done = 1.0 - dones
    v_tp1 = jnp.concatenate([values[1:], last_value[None]], axis=0)
    deltas = rewards + gamma * not_done * v_tp1 - values

    def backward(a_tp1, x):
        delta_t, not_done_t = x
        a_t = delta_t + gamma * gae_lambda * not_done_t * a_tp1
        return a_t, a_t

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(last_value), (deltas, not_done), reverse=True)
    return advantages, advantages + values
