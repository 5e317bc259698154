"""PPO and A2C: pure losses and jitted updates over a shared train state."""

from jaxrl_lander.algos.common import TrainState, make_learner

__all__ = ["TrainState", "make_learner"]
