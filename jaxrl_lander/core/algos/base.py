"""What PPO and A2C share: the train state, the rollout and batch they learn from, GAE, and the Learner."""

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_lander.core.policy import ActorCritic


class TrainState(flax.struct.PyTreeNode):
    """Everything an update changes: network parameters, optimiser state and the PRNG key."""

    params: Any
    opt_state: Any
    key: jax.Array


class Rollout(NamedTuple):
    """One rollout of T vector steps over B sub-envs, as fed to an update."""

    obs: jax.Array  # (T, B, obs_dim) observation each action was taken in
    actions: jax.Array  # (T, B) int32, or (T, B, action_dim) float32 as sampled (before clipping)
    rewards: jax.Array  # (T, B) float32, time-limit bootstrap already added
    dones: jax.Array  # (T, B) float32, 1.0 where the episode ended after this step
    last_obs: jax.Array  # (B, obs_dim) observation after the last step, for the bootstrap value
    valid: jax.Array | None = None  # (T, B) float32, 0.0 where a step only reset its env (None: every step counts)


class Batch(NamedTuple):
    """Flattened transitions with their targets; every field has leading dimension N = T * B."""

    obs: jax.Array  # (N, obs_dim)
    actions: jax.Array  # (N,) or (N, action_dim)
    old_log_probs: jax.Array  # (N,) under the parameters that collected the rollout
    old_values: jax.Array  # (N,)
    advantages: jax.Array  # (N,)
    returns: jax.Array  # (N,)
    valid: jax.Array | None = None  # (N,) 1.0 for a transition to learn from, 0.0 for a reset-only step


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


def make_batch(policy: ActorCritic, params, rollout: Rollout, gamma, gae_lambda) -> Batch:
    """Evaluate the collecting policy on the rollout, run GAE and flatten time and env axes.

    The parameters are those that collected the rollout, so these log-probs and values are the ones seen
    during collection; recomputing them here keeps the per-step host traffic to actions alone.
    """
    chex.assert_rank(rollout.obs, 3)
    chex.assert_equal_shape_prefix([rollout.obs, rollout.actions], 2)
    dist, values = policy.apply(params, rollout.obs)
    last_value = policy.apply(params, rollout.last_obs, method=ActorCritic.value)
    advantages, returns = gae(rollout.rewards, values, rollout.dones, last_value, gamma, gae_lambda)
    flat = lambda x: x.reshape((-1, *x.shape[2:]))  # noqa: E731  (T, B, ...) -> (T * B, ...)
    batch = Batch(
        obs=rollout.obs,
        actions=rollout.actions,
        old_log_probs=dist.log_prob(rollout.actions),
        old_values=values,
        advantages=advantages,
        returns=returns,
        valid=rollout.valid,
    )
    return jax.tree.map(lambda x: jax.lax.stop_gradient(flat(x)), batch)


def mean(x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """The mean of x, over the entries where `valid` is 1 when a mask is given (0 when none is)."""
    if valid is None:
        return x.mean()
    return jnp.sum(x * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def variance(x: jax.Array, valid: jax.Array | None = None, ddof: int = 0) -> jax.Array:
    """The variance of x (over the valid entries), with `ddof` delta degrees of freedom."""
    if valid is None:
        return jnp.var(x, ddof=ddof)
    count = jnp.sum(valid)
    return jnp.sum(valid * (x - mean(x, valid)) ** 2) / jnp.maximum(count - ddof, 1.0)


def normalize(advantages: jax.Array, enabled: bool, valid: jax.Array | None = None) -> jax.Array:
    """Standardise (over the valid entries) with the unbiased std, as PyTorch's Tensor.std() used by
    Stable-Baselines3."""
    if not enabled or advantages.shape[0] < 2:
        return advantages
    if valid is None:
        return (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-8)
    return (advantages - mean(advantages, valid)) / (jnp.sqrt(variance(advantages, valid, ddof=1)) + 1e-8)


def explained_variance(values: jax.Array, returns: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """1 - Var[returns - values] / Var[returns]; 1 is a perfect critic, <= 0 no better than a constant."""
    var_returns = variance(returns, valid)
    return jnp.where(var_returns == 0, jnp.nan, 1.0 - variance(returns - values, valid) / var_returns)


def all_finite(tree) -> jax.Array:
    """Whether every entry of every leaf is finite (a scalar bool)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def hparams_from_config(cls, config):
    """An algorithm's HParams dataclass filled from the config fields of the same names."""
    return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)})


class StepSizeState(NamedTuple):
    count: jax.Array  # int32: gradient steps taken
    learning_rate: jax.Array  # float32: a leaf of the state, so agents stacked with different rates share a program


def scale_by_step_size(learning_rate: float, anneal_steps: int | None) -> optax.GradientTransformation:
    """u <- -lr_t * u with lr_t = learning_rate, or learning_rate * (1 - t / anneal_steps) (0 after) when
    annealed; t counts the gradient steps. As optax's scale_by_learning_rate, with the rate held in the state."""

    def init(params):
        del params
        return StepSizeState(jnp.zeros([], jnp.int32), jnp.asarray(learning_rate, jnp.float32))

    def update(updates, state: StepSizeState, params=None):
        del params
        rate = state.learning_rate
        if anneal_steps:
            rate = rate * (1 - jnp.clip(state.count, 0, anneal_steps) / anneal_steps)
        updates = jax.tree.map(lambda g: jnp.array(-rate, dtype=g.dtype) * g, updates)
        return updates, state._replace(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def step_size(config, gradient_steps_per_update: int) -> optax.GradientTransformation:
    """The config's step size: constant, or decaying linearly to 0 over the updates of total_timesteps."""
    total_updates = max(config.total_timesteps // config.rollout_size, 1)
    return scale_by_step_size(config.learning_rate,
                              total_updates * gradient_steps_per_update if config.anneal_lr else None)


@partial(jax.jit, static_argnames=("policy", "obs_dim"))
def init_params(policy: ActorCritic, key: jax.Array, obs_dim: int) -> tuple[Any, jax.Array]:
    """Fresh parameters, and the key left; compiled as one program rather than dozens of small ones (one for
    every config of the same network: agents of different step sizes share it)."""
    init_key, key = jax.random.split(key)
    return policy.init(init_key, jnp.zeros((1, obs_dim), jnp.float32)), key


def init_state(policy: ActorCritic, tx: optax.GradientTransformation, key: jax.Array, obs_dim: int) -> TrainState:
    """Fresh parameters and optimiser state."""
    params, key = init_params(policy, key, obs_dim)
    return TrainState(params=params, opt_state=tx.init(params), key=key)


@dataclasses.dataclass(frozen=True)
class Learner:
    """An algorithm made concrete for one config and env: network, optimiser, hyperparameters, jitted update."""

    config: Any
    network: ActorCritic
    obs_dim: int
    tx: optax.GradientTransformation
    hparams: Any
    update: Callable[[TrainState, Rollout], tuple[TrainState, dict[str, jax.Array]]]

    def init(self, key: jax.Array) -> TrainState:
        """A fresh train state from `key` (also the template a checkpoint is restored into)."""
        return init_state(policy=self.network, tx=self.tx, key=key, obs_dim=self.obs_dim)

    def traced_update(self, state: TrainState, rollout: Rollout, alive: jax.Array):
        """`update` inside another program (of the device it runs on)."""
        return self.update(state, rollout, alive=alive)

    def learning_rate_at(self, update: int, agent: int = 0) -> float:
        """The step size at the first gradient step of update number `update` (counting from 0)."""
        config = self.config
        if not config.anneal_lr:
            return float(config.learning_rate)
        total_updates = max(config.total_timesteps // config.rollout_size, 1)
        return float(config.learning_rate * (1 - min(update, total_updates) / total_updates))


def build_learner(algorithm, config, obs_dim: int, action_size: int, continuous: bool = False,
                  wrap: Callable | None = None) -> Learner:
    """`algorithm` (a module with HParams, make_optimizer, static_args and update) made concrete for `config`.

    The jitted update `update(state, rollout, alive=True)` also reports whether the new parameters are all
    finite (`params_finite`), and takes in the new state only where they and the loss are and the agent is
    `alive` (has not failed before); otherwise it returns `state` as it was, so that a failed agent keeps its
    last good state in a program that runs several updates in a row. `taken_in` says which: the agent is alive
    after it. `wrap` (tests) wraps the pure update before jit, e.g. with chex.assert_max_traces.
    """
    network = ActorCritic(action_size=action_size, hidden_size=config.hidden_size, continuous=continuous,
                          log_std_init=config.log_std_init)
    tx = algorithm.make_optimizer(config)
    hparams = algorithm.HParams.from_config(config)
    static = algorithm.static_args(config)

    def pure_update(state: TrainState, rollout: Rollout, hparams, alive):
        new, metrics = algorithm.update(state, rollout, hparams, policy=network, tx=tx, **static)
        metrics["params_finite"] = all_finite(new.params)
        metrics["taken_in"] = jnp.logical_and(alive, jnp.logical_and(jnp.isfinite(metrics["loss"]),
                                                                     metrics["params_finite"]))
        return jax.tree.map(lambda n, o: jnp.where(metrics["taken_in"], n, o), new, state), metrics

    jitted = jax.jit(wrap(pure_update) if wrap is not None else pure_update)
    return Learner(config=config, network=network, obs_dim=obs_dim, tx=tx, hparams=hparams,
                   update=partial(jitted, hparams=hparams, alive=ALIVE))


ALIVE = np.bool_(True)  # the `alive` of an update called without one (one dtype: one compiled program)
