"""What PPO and A2C share: the train state, the batch they learn from, and building an algorithm's update."""

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxrl_lander.policy import ActorCritic, log_prob
from jaxrl_lander.rollout import Rollout, gae


class TrainState(flax.struct.PyTreeNode):
    """Everything an update changes: network parameters, optimiser state and the PRNG key."""

    params: Any
    opt_state: Any
    key: jax.Array


class Batch(NamedTuple):
    """Flattened transitions with their targets; every field has leading dimension N = T * B."""

    obs: jax.Array  # (N, obs_dim)
    actions: jax.Array  # (N,)
    old_log_probs: jax.Array  # (N,) under the parameters that collected the rollout
    old_values: jax.Array  # (N,)
    advantages: jax.Array  # (N,)
    returns: jax.Array  # (N,)


def make_batch(policy: ActorCritic, params, rollout: Rollout, gamma, gae_lambda) -> Batch:
    """Evaluate the collecting policy on the rollout, run GAE and flatten time and env axes.

    The parameters are those that collected the rollout, so these log-probs and values are the ones seen
    during collection; recomputing them here keeps the per-step host traffic to actions alone.
    """
    chex.assert_rank([rollout.obs, rollout.actions], [3, 2])
    logits, values = policy.apply(params, rollout.obs)
    last_value = policy.apply(params, rollout.last_obs, method=ActorCritic.value)
    advantages, returns = gae(rollout.rewards, values, rollout.dones, last_value, gamma, gae_lambda)
    flat = lambda x: x.reshape((-1, *x.shape[2:]))  # noqa: E731  (T, B, ...) -> (T * B, ...)
    batch = Batch(
        obs=rollout.obs,
        actions=rollout.actions,
        old_log_probs=log_prob(logits, rollout.actions),
        old_values=values,
        advantages=advantages,
        returns=returns,
    )
    return jax.tree.map(lambda x: jax.lax.stop_gradient(flat(x)), batch)


def normalize(advantages: jax.Array, enabled: bool) -> jax.Array:
    """Standardise with the unbiased std, as PyTorch's Tensor.std() used by Stable-Baselines3."""
    if not enabled or advantages.shape[0] < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-8)


def explained_variance(values: jax.Array, returns: jax.Array) -> jax.Array:
    """1 - Var[returns - values] / Var[returns]; 1 is a perfect critic, <= 0 no better than a constant."""
    var_returns = jnp.var(returns)
    return jnp.where(var_returns == 0, jnp.nan, 1.0 - jnp.var(returns - values) / var_returns)


def all_finite(tree) -> jax.Array:
    """Whether every entry of every leaf is finite (a scalar bool)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def hparams_from_config(cls, config):
    """An algorithm's HParams dataclass filled from the config fields of the same names."""
    return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)})


def learning_rate(config, gradient_steps_per_update: int) -> float | optax.Schedule:
    """The config's step size: constant, or decaying linearly to 0 over the updates of total_timesteps."""
    if not config.anneal_lr:
        return config.learning_rate
    total_updates = max(config.total_timesteps // config.rollout_size, 1)
    return optax.linear_schedule(config.learning_rate, 0.0, total_updates * gradient_steps_per_update)


def learning_rate_at(config, update: int) -> float:
    """The step size at the first gradient step of update number `update` (counting from 0)."""
    schedule = learning_rate(config, 1)
    return float(schedule(update)) if callable(schedule) else float(schedule)


@partial(jax.jit, static_argnames=("policy", "tx", "obs_dim"))
def init_state(policy: ActorCritic, tx: optax.GradientTransformation, key: jax.Array, obs_dim: int) -> TrainState:
    """Fresh parameters and optimiser state; compiled as one program rather than dozens of small ones."""
    init_key, key = jax.random.split(key)
    params = policy.init(init_key, jnp.zeros((1, obs_dim), jnp.float32))
    return TrainState(params=params, opt_state=tx.init(params), key=key)


class Learner(NamedTuple):
    """An algorithm made concrete for one config: its policy, optimiser, hyperparameters and jitted update."""

    policy: ActorCritic
    tx: optax.GradientTransformation
    hparams: Any
    update: Callable[[TrainState, Rollout], tuple[TrainState, dict[str, jax.Array]]]


def make_learner(config, num_actions: int, wrap: Callable | None = None) -> Learner:
    """Build the policy, optimiser and the jitted `update(state, rollout)` for config.algo.

    `wrap` (tests) wraps the pure update before jit, e.g. with chex.assert_max_traces.
    """
    from jaxrl_lander.algos import a2c, ppo

    module = {"ppo": ppo, "a2c": a2c}[config.algo]
    policy = ActorCritic(num_actions=num_actions, hidden_size=config.hidden_size)
    tx = module.make_optimizer(config)
    hparams = module.HParams.from_config(config)
    static = module.static_args(config)

    def pure_update(state: TrainState, rollout: Rollout, hparams):
        state, metrics = module.update(state, rollout, hparams, policy=policy, tx=tx, **static)
        metrics["params_finite"] = all_finite(state.params)
        return state, metrics

    if wrap is not None:
        pure_update = wrap(pure_update)
    jitted = jax.jit(pure_update)
    return Learner(policy=policy, tx=tx, hparams=hparams, update=lambda state, rollout: jitted(state, rollout, hparams))
