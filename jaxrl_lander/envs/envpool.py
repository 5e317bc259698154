"""envpool's C++ port of gymnasium's LunarLander, stepped by a function that runs inside a jitted program.

envpool resets a finished env on its next step (gymnasium's NEXT_STEP autoreset): the observation returned with
a done is the episode's true last one, and the step after it only resets (its action is ignored, its reward is
0). The env state lives outside JAX, so it cannot be checkpointed; the pool is seeded once, when it is made, each
sub-env with a seed of its own (`env_seed`), so that an agent's sub-envs play the same episodes whatever other
agents share the pool.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Pool(NamedTuple):
    """A batch of envs, reset, with the function that steps them inside a jitted program."""

    env: Any  # the envpool object (kept alive while the handle is used)
    handle: jax.Array  # the env's token; each step takes it and returns the next one
    step: Callable  # step(handle, actions) -> (handle, (obs, reward, terminated, truncated, info))
    first_obs: np.ndarray  # (B, obs_dim) float32


def make_pool(env_id: str, seeds: list[int]) -> Pool:
    """One sub-env per seed, sub-env i reset with seeds[i] (as `seed=seeds[0]` does for consecutive seeds)."""
    import envpool
    import envpool.box2d.registration  # noqa: F401  (already, unless the command line's hook came first)

    env = envpool.make(env_id, env_type="gymnasium", num_envs=len(seeds), env_seed=list(seeds))
    obs, _ = env.reset()
    handle, _, _, step = env.xla()
    return Pool(env=env, handle=handle, step=step, first_obs=np.asarray(obs, np.float32))


def episode_ends(rewards: jax.Array, terminated: jax.Array, truncated: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(terminated, truncated) as gymnasium reports them.

    LunarLander's terminal rewards are exactly -100 (a crash, or flying off) and +100 (at rest). envpool
    reports an episode that ends so at its time limit as truncated only: that step is a termination, and its
    return gets no bootstrap.
    """
    terminal = jnp.logical_or(terminated, jnp.logical_and(truncated, jnp.abs(rewards) == 100.0))
    return terminal, jnp.logical_and(truncated, jnp.logical_not(terminal))
