"""Every random number of a run from its one integer seed: the named PRNG keys and the env seed ranges.

Training env seeds lie below 2^30 + num_envs; evaluation seeds from 2^31 on, so the two never meet. The
evaluation seeds are laid end to end: the evaluations during training play the first eval_interval_episodes,
the candidates of a checkpoint selection the next selection_episodes, the final evaluation the ones after
(only past the others when a selection chose what it judges).
"""

import dataclasses

import jax

from jaxrl_lander.config import RunConfig

TRAIN_SEED_RANGE = 2**30
EVAL_SEED_OFFSET = 2**31


@dataclasses.dataclass(frozen=True)
class RunKeys:
    """The named keys one integer seed is split into."""

    state: jax.Array  # network init, then acting and minibatch shuffling (lives in the train state)
    env: jax.Array  # training env seeds
    eval: jax.Array  # evaluation env seeds

    @classmethod
    def from_seed(cls, seed: int) -> "RunKeys":
        state, env, eval_ = jax.random.split(jax.random.key(seed), 3)
        return cls(state=state, env=env, eval=eval_)


def train_env_seed(env_key: jax.Array, timestep: int) -> int:
    """Base seed of the training envs when (re)starting at `timestep`; sub-env i gets base + i."""
    key = jax.random.fold_in(env_key, timestep)
    return int(jax.random.randint(key, (), 0, TRAIN_SEED_RANGE))


def eval_env_seed(eval_key: jax.Array) -> int:
    """Base seed of evaluation episodes; episode j gets base + j, disjoint from every training seed."""
    return EVAL_SEED_OFFSET + int(jax.random.randint(eval_key, (), 0, TRAIN_SEED_RANGE))


@dataclasses.dataclass(frozen=True)
class EvalSeeds:
    """First seeds of a run's three kinds of evaluation episodes."""

    during_training: int
    selection: int
    final: int

    @classmethod
    def of(cls, config: RunConfig) -> "EvalSeeds":
        first = eval_env_seed(RunKeys.from_seed(config.seed).eval)
        selection = first + config.eval_interval_episodes
        final = selection + config.selection_episodes if config.select_best_checkpoint else first
        return cls(during_training=first, selection=selection, final=final)
