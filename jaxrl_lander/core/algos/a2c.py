"""A2C: one gradient step of the advantage actor-critic loss per rollout; RMSprop as in PyTorch, or Adam."""

import chex
import flax.struct
import jax
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
    ent_coef: float
    vf_coef: float
    normalize_advantage: bool = flax.struct.field(pytree_node=False)

    @classmethod
    def from_config(cls, config) -> "HParams":
        return hparams_from_config(cls, config)


def make_optimizer(config) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        inner = optax.scale_by_adam(eps=config.adam_eps)
    else:
        # PyTorch's RMSprop: nu starts at 0, and eps is added to sqrt(nu), not inside it.
        inner = optax.scale_by_rms(decay=config.rms_decay, eps=config.rms_eps, eps_in_sqrt=False)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), inner, step_size(config, 1))


def static_args(config) -> dict:
    return {}


def loss(params, policy: ActorCritic, batch: Batch, hp: HParams) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = -E[A log pi(a|s)] + vf_coef * E[(R - V)^2] - ent_coef * E[H[pi]], A standardised if asked."""
    chex.assert_rank([batch.advantages, batch.returns], 1)
    chex.assert_equal_shape_prefix([batch.actions, batch.advantages], 1)
    dist, values = policy.apply(params, batch.obs)
    valid = batch.valid  # every E is over the transitions to learn from
    advantages = normalize(batch.advantages, hp.normalize_advantage, valid)
    policy_loss = -mean(advantages * dist.log_prob(batch.actions), valid)
    value_loss = mean((batch.returns - values) ** 2, valid)
    entropy_mean = mean(dist.entropy(), valid)
    total = policy_loss + hp.vf_coef * value_loss - hp.ent_coef * entropy_mean
    return total, {"loss": total, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy_mean}


def update(
    state: TrainState, rollout: Rollout, hp: HParams, *, policy: ActorCritic, tx: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One gradient step on the whole rollout."""
    batch = make_batch(policy, state.params, rollout, hp.gamma, hp.gae_lambda)
    (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params, policy, batch, hp)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics["explained_variance"] = explained_variance(batch.old_values, batch.returns, batch.valid)
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state), metrics
