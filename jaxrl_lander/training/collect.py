"""Collectors: act in the envs until a rollout is full or the loop's next event is due, and hand back the
transitions and the finished episodes.

HostCollector steps gymnasium's vector env from Python, one jitted action sample per vector step, and fills a
preallocated numpy buffer that goes to the update's device once per rollout.
"""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple, Protocol

import gymnasium as gym
import jax
import numpy as np

from jaxrl_lander.core.algos.base import Rollout, TrainState
from jaxrl_lander.config import RunConfig
from jaxrl_lander.envs.gymnasium import reset_envs, step_envs
from jaxrl_lander.envs.normalization import Normalizer
from jaxrl_lander.core.policy import ActorCritic, sample_action, state_value
from jaxrl_lander.training.runtime import Devices


class Episode(NamedTuple):
    """A finished training episode."""

    step: int  # the run's env-step count at the vector step it ended in
    episode_return: float
    length: int


class Collection(NamedTuple):
    """What one collect call gathered."""

    steps: int  # env steps taken: vector steps x num_envs
    episodes: Callable[[], list[list[Episode]]]  # each agent's, in the order they ended; a compiled collector's
    # are read from the device when called (the loop calls it once the update is dispatched)
    rollout: Rollout | None  # on the update's device, when the rollout filled up during this call
    key: jax.Array  # the acting key after these steps, on the update's device


class Collector(Protocol):
    """What the loop needs of a collector."""

    num_envs: int
    normalizer: Normalizer | None

    def start(self, env_seeds: list[int]) -> None:
        """Reset the envs, each agent's as in its standalone run (agent a's sub-env i seeded env_seeds[a] + i)."""

    def collect(self, state: TrainState, timestep: int, max_steps: int, should_stop) -> Collection:
        """Act with `state`'s parameters and key from env step `timestep` until the rollout is full, at least
        `max_steps` env steps are taken, or should_stop() says so (checked before each vector step); the key it
        advanced comes back in the Collection. A compiled collector plays the rest of the rollout whatever the
        last two say."""

    def pending(self, timestep: int) -> tuple[dict[str, np.ndarray], int]:
        """The rollout as it stood at env step `timestep` (the loop's latest), for a checkpoint: its arrays and
        the vector steps collected."""

    def resume_pending(self, state: TrainState, arrays: dict[str, np.ndarray], filled: int) -> None:
        """Continue the partly collected rollout of a checkpoint (after `start`), `state` the checkpoint's."""

    def close(self) -> None: ...


class RolloutBuffer:
    """Preallocated numpy arrays filled one vector step at a time."""

    def __init__(self, n_steps: int, num_envs: int, obs_dim: int):
        self.obs = np.zeros((n_steps, num_envs, obs_dim), np.float32)
        self.actions = np.zeros((n_steps, num_envs), np.int32)
        self.rewards = np.zeros((n_steps, num_envs), np.float32)
        self.dones = np.zeros((n_steps, num_envs), np.float32)
        self.n_steps = n_steps
        self.pos = 0

    def add(self, obs, actions, rewards, dones) -> None:
        t = self.pos
        self.obs[t] = obs
        self.actions[t] = actions
        self.rewards[t] = rewards
        self.dones[t] = dones
        self.pos += 1

    @property
    def full(self) -> bool:
        return self.pos == self.n_steps

    def arrays(self) -> dict[str, np.ndarray]:
        """The buffer's arrays, whole (rows from `pos` on are stale)."""
        return {"obs": self.obs, "actions": self.actions, "rewards": self.rewards, "dones": self.dones}

    def load(self, arrays: dict[str, np.ndarray], filled: int) -> None:
        """Take back `arrays` (as `arrays()` gave them), `filled` rows of them collected."""
        for name, array in self.arrays().items():
            array[...] = arrays[name]
        self.pos = filled

    def rollout(self, last_obs: np.ndarray, device: jax.Device | None = None) -> Rollout:
        """The filled rollout as arrays on `device` (one transfer per update); empties the buffer."""
        assert self.full, "rollout requested before the buffer is full"
        self.pos = 0
        return Rollout(*jax.device_put((self.obs, self.actions, self.rewards, self.dones, last_obs), device))


def env_dims(envs: gym.vector.VectorEnv) -> tuple[int, int]:
    """(observation size, number of discrete actions) of a vector env's sub-envs."""
    return int(np.prod(envs.single_observation_space.shape)), int(envs.single_action_space.n)


def bootstrap_cut(arrays: dict[str, np.ndarray], filled: int, value_fn, gamma: float) -> None:
    """Prepare a checkpoint's partly collected rollout (in place) for envs that cannot be restored and so begin
    new episodes: its last transition becomes a time-limit truncation, bootstrapped with the value of the
    observation it led to, as a real time limit is. An episode that ended right there needs no bootstrap."""
    if filled:
        last = filled - 1
        cut = 1.0 - arrays["dones"][last]
        values = np.asarray(value_fn(arrays["next_obs"]), np.float32)
        arrays["rewards"][last] += gamma * values * cut
        arrays["dones"][last] = 1.0


class HostCollector:
    """gymnasium's vector env stepped from Python; the policy samples actions on the act device."""

    def __init__(self, envs: gym.vector.VectorEnv, network: ActorCritic, config: RunConfig, devices: Devices):
        self.envs, self.config, self.devices = envs, config, devices
        self.num_envs = config.num_envs
        obs_dim, _ = env_dims(envs)
        self.normalizer = None
        if config.normalize_observations or config.normalize_rewards:
            self.normalizer = Normalizer(obs_dim, config.num_envs, config.gamma,
                                         observations=config.normalize_observations, rewards=config.normalize_rewards)
        self.buffer = RolloutBuffer(config.n_steps, config.num_envs, obs_dim)
        self.act = jax.jit(partial(sample_action, network))
        self.value = jax.jit(partial(state_value, network))
        self.obs = np.zeros((config.num_envs, obs_dim), np.float32)  # until start() resets the envs
        self._params, self._params_of = None, None  # the acting copy, and the parameters it is a copy of

    def start(self, env_seeds: list[int]) -> None:
        (env_seed,) = env_seeds  # one agent
        self.obs = reset_envs(self.envs, env_seed, self.normalizer)

    def _acting(self, params):
        """`params` on the act device (the same arrays when that is the update's device), copied once per update."""
        if params is not self._params_of:
            self._params, self._params_of = jax.device_put(params, self.devices.act), params
        return self._params

    def collect(self, state: TrainState, timestep: int, max_steps: int, should_stop) -> Collection:
        config, buffer = self.config, self.buffer
        params, key = self._acting(state.params), jax.device_put(state.key, self.devices.act)
        value_fn = lambda o: self.value(params, o)  # noqa: E731
        taken, episodes = 0, []
        while not buffer.full and taken < max_steps and not should_stop():
            actions, key = self.act(params, self.obs, key)
            actions = np.asarray(actions)
            out = step_envs(self.envs, actions, value_fn, config.gamma, config.reward_scale, self.normalizer)
            buffer.add(self.obs, actions, out.rewards, out.dones)
            self.obs = out.obs
            taken += self.num_envs
            episodes += [Episode(timestep + taken, ret, length) for _, ret, length in out.episodes]
        rollout = buffer.rollout(self.obs, self.devices.update) if buffer.full else None
        return Collection(taken, lambda: [episodes], rollout, jax.device_put(key, self.devices.update))

    def pending(self, timestep: int) -> tuple[dict[str, np.ndarray], int]:
        """The partly collected rollout (a checkpoint keeps it): the buffer's arrays with the observation the next
        step acts on, and the number of vector steps collected (this collector never runs past `timestep`)."""
        return {**self.buffer.arrays(), "next_obs": np.asarray(self.obs, np.float32)}, self.buffer.pos

    def resume_pending(self, state: TrainState, arrays: dict[str, np.ndarray], filled: int) -> None:
        """Continue a partly collected rollout after `start` (see `bootstrap_cut`)."""
        self.buffer.load(arrays, filled)
        params = self._acting(state.params)
        bootstrap_cut({**self.buffer.arrays(), "next_obs": arrays["next_obs"]}, filled,
                      lambda obs: self.value(params, obs), self.config.gamma)

    def close(self) -> None:
        self.envs.close()
