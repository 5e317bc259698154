"""The algorithms, by name: each a module with a pure loss, an optimiser and a jitted update over base's state."""

from jaxrl_lander.core.algos import a2c, ppo
from jaxrl_lander.core.algos.base import Learner, Rollout, TrainState, build_learner

ALGORITHMS = {"ppo": ppo, "a2c": a2c}


def make_learner(config, obs_dim: int, action_size: int, continuous: bool = False, wrap=None) -> Learner:
    """The Learner of config.algo for an env with `obs_dim` observations and `action_size` discrete actions (or
    continuous ones of that dimension: config.EnvShape)."""
    return build_learner(ALGORITHMS[config.algo], config, obs_dim, action_size, continuous, wrap)


__all__ = ["ALGORITHMS", "Learner", "Rollout", "TrainState", "make_learner"]
