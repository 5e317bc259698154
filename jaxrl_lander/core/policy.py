"""Flax actor-critic: separate 64-64 tanh MLPs with Stable-Baselines3's orthogonal initialisation, and the two
action distributions its actor head parameterises (categorical for discrete actions, diagonal Gaussian for
continuous ones)."""

import math
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


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


class Categorical(NamedTuple):
    """pi(a|s) = softmax(logits)_a over integer actions."""

    logits: jax.Array  # (..., num_actions)

    def log_prob(self, actions: jax.Array) -> jax.Array:
        """log pi(a|s) of integer actions (...,)."""
        log_p = jax.nn.log_softmax(self.logits)
        return jnp.take_along_axis(log_p, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self) -> jax.Array:
        """H = -sum_a pi(a|s) log pi(a|s), (...,)."""
        log_p = jax.nn.log_softmax(self.logits)
        return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.categorical(key, self.logits).astype(jnp.int32)

    def mode(self) -> jax.Array:
        """The deterministic action: argmax of the logits."""
        return jnp.argmax(self.logits, axis=-1).astype(jnp.int32)


class DiagGaussian(NamedTuple):
    """pi(a|s) = N(a; mean(s), diag(exp(log_std))^2) over real action vectors, the log-std a parameter of its own
    (state-independent), as Stable-Baselines3's and CleanRL's continuous PPO and A2C have it. Actions are not
    squashed: the env gets them clipped to its bounds (`env_action`), the losses see them as sampled."""

    mean: jax.Array  # (..., action_dim)
    log_std: jax.Array  # (action_dim,), or broadcastable to mean

    def log_prob(self, actions: jax.Array) -> jax.Array:
        """log pi(a|s) = sum_i [-(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2], (...,)."""
        chex.assert_equal_shape([actions, self.mean])
        z = (actions - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * LOG_2PI, axis=-1)

    def entropy(self) -> jax.Array:
        """H = sum_i [log sigma_i + (1 + log(2 pi)) / 2], the same for every state, (...,)."""
        per_state = jnp.sum(self.log_std + 0.5 * (1.0 + LOG_2PI), axis=-1)
        return jnp.broadcast_to(per_state, self.mean.shape[:-1])

    def sample(self, key: jax.Array) -> jax.Array:
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        """The deterministic action: the mean."""
        return self.mean


Distribution = Categorical | DiagGaussian


class ActorCritic(nn.Module):
    """Maps observations (..., obs_dim) to an action distribution and values (...).

    `action_size` is the number of discrete actions, or the dimension of a continuous action (`continuous`); a
    continuous policy's log-std starts at `log_std_init` (0, std 1, as Stable-Baselines3's by default)."""

    action_size: int
    hidden_size: int = 64
    continuous: bool = False
    log_std_init: float = 0.0

    def setup(self):
        self.actor = MLP(self.hidden_size, self.action_size, head_gain=0.01)
        self.critic = MLP(self.hidden_size, 1, head_gain=1.0)
        if self.continuous:
            self.log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_size,))

    @property
    def action_shape(self) -> tuple[int, ...]:
        """The shape of one action: () for an integer, (action_size,) for a continuous one."""
        return (self.action_size,) if self.continuous else ()

    @property
    def action_dtype(self):
        return jnp.float32 if self.continuous else jnp.int32

    def __call__(self, obs: jax.Array) -> tuple[Distribution, jax.Array]:
        return self.distribution(obs), self.critic(obs)[..., 0]

    def value(self, obs: jax.Array) -> jax.Array:
        return self.critic(obs)[..., 0]

    def distribution(self, obs: jax.Array) -> Distribution:
        out = self.actor(obs)
        return DiagGaussian(out, self.log_std) if self.continuous else Categorical(out)


def sample_action(policy: ActorCritic, params, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample one action per observation; returns (actions, the key to use next). Continuous actions are returned
    as sampled (unclipped): what the losses learn from; `env_action` gives what the env is stepped with."""
    key, action_key = jax.random.split(key)
    return policy.apply(params, obs, method=ActorCritic.distribution).sample(action_key), key


def sample_env_action(policy: ActorCritic, params, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sample_action's actions as an env takes them (`env_action`): for playing, not for learning."""
    actions, key = sample_action(policy, params, obs, key)
    return env_action(policy, actions), key


def greedy_action(policy: ActorCritic, params, obs: jax.Array) -> jax.Array:
    """The deterministic policy: argmax of the logits, or the Gaussian's mean clipped to the action bounds."""
    return env_action(policy, policy.apply(params, obs, method=ActorCritic.distribution).mode())


def env_action(policy: ActorCritic, actions: jax.Array) -> jax.Array:
    """Actions as an env takes them: continuous ones clipped to [-1, 1] (the LunarLander family's bounds)."""
    return jnp.clip(actions, -1.0, 1.0) if policy.continuous else actions


def state_value(policy: ActorCritic, params, obs: jax.Array) -> jax.Array:
    return policy.apply(params, obs, method=ActorCritic.value)
