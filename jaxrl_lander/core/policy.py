"""Flax actor-critic: separate 64-64 tanh MLPs with Stable-Baselines3's orthogonal initialisation."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _dense(features: int, gain: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(gain), bias_init=nn.initializers.zeros)


class MLP(nn.Module):
    """Two tanh hidden layers (gain sqrt 2) and a linear head of the given gain."""

    hidden_size: int
    out_size: int
    head_gain: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(2):
            x = nn.tanh(_dense(self.hidden_size, math.sqrt(2.0))(x))
        return _dense(self.out_size, self.head_gain)(x)


class ActorCritic(nn.Module):
    """Maps observations (..., obs_dim) to action logits (..., num_actions) and values (...)."""

    num_actions: int
    hidden_size: int = 64

    def setup(self):
        self.actor = MLP(self.hidden_size, self.num_actions, head_gain=0.01)
        self.critic = MLP(self.hidden_size, 1, head_gain=1.0)

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.actor(obs), self.critic(obs)[..., 0]

    def value(self, obs: jax.Array) -> jax.Array:
        return self.critic(obs)[..., 0]

    def logits(self, obs: jax.Array) -> jax.Array:
        return self.actor(obs)


def log_prob(logits: jax.Array, actions: jax.Array) -> jax.Array:
    """log pi(a|s) of integer actions under categorical logits."""
    log_p = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(log_p, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits: jax.Array) -> jax.Array:
    """Entropy of the categorical distribution given by logits."""
    log_p = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def sample_action(policy: ActorCritic, params, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample one action per observation; returns (actions, the key to use next)."""
    key, action_key = jax.random.split(key)
    actions = jax.random.categorical(action_key, policy.apply(params, obs, method=ActorCritic.logits))
    return actions.astype(jnp.int32), key


def greedy_action(policy: ActorCritic, params, obs: jax.Array) -> jax.Array:
    """The deterministic policy: argmax of the logits."""
    return jnp.argmax(policy.apply(params, obs, method=ActorCritic.logits), axis=-1).astype(jnp.int32)


def state_value(policy: ActorCritic, params, obs: jax.Array) -> jax.Array:
    return policy.apply(params, obs, method=ActorCritic.value)
