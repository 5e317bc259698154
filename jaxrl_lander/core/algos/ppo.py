"""PPO with the clipped surrogate objective, as Stable-Baselines3 computes it."""

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxrl_lander.core.algos.base import (
    Batch,
    Rollout,
    TrainState,
    explained_variance,
    hparams_from_config,
    make_batch,
    mean,
    normalize,
    step_size,
)
from jaxrl_lander.core.policy import ActorCritic


@flax.struct.dataclass
class HParams:
    """Float hyperparameters are traced leaves; normalize_advantage changes the graph, so it is static."""

    gamma: float
    gae_lambda: float
    clip_range: float
    ent_coef: float
    vf_coef: float
    normalize_advantage: bool = flax.struct.field(pytree_node=False)

    @classmethod
    def from_config(cls, config) -> "HParams":
        return hparams_from_config(cls, config)


def make_optimizer(config) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.scale_by_adam(eps=config.adam_eps),
        step_size(config, config.n_epochs * config.num_minibatches),
    )


def static_args(config) -> dict:
    """Integers that fix array shapes: compiled in, never traced."""
    return {"n_epochs": config.n_epochs, "num_minibatches": config.num_minibatches}


def loss(params, policy: ActorCritic, batch: Batch, hp: HParams) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] + vf_coef * E[(R - V)^2] - ent_coef * E[H[pi]].

    r = pi(a|s) / pi_old(a|s); A standardised over the minibatch when hp.normalize_advantage. Every E is over
    the transitions to learn from (batch.valid).
    """
    chex.assert_rank([batch.advantages, batch.returns], 1)
    chex.assert_equal_shape_prefix([batch.actions, batch.advantages], 1)
    dist, values = policy.apply(params, batch.obs)
    log_ratio = dist.log_prob(batch.actions) - batch.old_log_probs
    ratio = jnp.exp(log_ratio)
    valid = batch.valid
    advantages = normalize(batch.advantages, hp.normalize_advantage, valid)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - hp.clip_range, 1.0 + hp.clip_range) * advantages)
    policy_loss = -mean(surrogate, valid)
    value_loss = mean((batch.returns - values) ** 2, valid)
    entropy_mean = mean(dist.entropy(), valid)
    total = policy_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy_mean
    info = {
        "loss": total,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy_mean,
        "approx_kl": mean((ratio - 1.0) - log_ratio, valid),
        "clip_fraction": mean((jnp.abs(ratio - 1.0) > hp.clip_range).astype(jnp.float32), valid),
    }
    return total, info


def update(
    state: TrainState,
    rollout: Rollout,
    hp: HParams,
    *,
    policy: ActorCritic,
    tx: optax.GradientTransformation,
    n_epochs: int,
    num_minibatches: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """n_epochs passes over the rollout in shuffled minibatches, all inside one lax.scan nest."""
    batch = make_batch(policy, state.params, rollout, hp.gamma, hp.gae_lambda)
    n = batch.actions.shape[0]
    grad_fn = jax.value_and_grad(loss, has_aux=True)

    def minibatch_step(carry, minibatch: Batch):
        params, opt_state = carry
        (_, info), grads = grad_fn(params, policy, minibatch, hp)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), info

    def epoch(carry, epoch_key):
        permutation = jax.random.permutation(epoch_key, n)
        minibatches = jax.tree.map(
            lambda x: x[permutation].reshape((num_minibatches, n // num_minibatches, *x.shape[1:])), batch
        )
        return jax.lax.scan(minibatch_step, carry, minibatches)

    key, epochs_key = jax.random.split(state.key)
    (params, opt_state), infos = jax.lax.scan(
        epoch, (state.params, state.opt_state), jax.random.split(epochs_key, n_epochs)
    )
    metrics = jax.tree.map(jnp.mean, infos)
    metrics["explained_variance"] = explained_variance(batch.old_values, batch.returns, batch.valid)
    return state.replace(params=params, opt_state=opt_state, key=key), metrics
