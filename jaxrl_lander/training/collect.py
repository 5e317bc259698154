"""Collectors: act in the envs until the loop's next event is due, learn from each rollout completed on the way,
and hand back the finished episodes and the updates' metrics.

HostCollector steps gymnasium's vector env from Python, one jitted action sample per vector step, and fills a
preallocated numpy buffer that goes to the update's device once per rollout.
"""

import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple, Protocol

import gymnasium as gym
import jax
import numpy as np

from jaxrl_lander.core.algos.base import Learner, Rollout, TrainState
from jaxrl_lander.config import EnvShape, RunConfig
from jaxrl_lander.envs.gymnasium import reset_envs, step_envs
from jaxrl_lander.envs.normalization import Normalizer
from jaxrl_lander.core.policy import env_action, sample_action, state_value
from jaxrl_lander.training.runtime import Devices


class Episode(NamedTuple):
    """A finished training episode."""

    step: int  # the run's env-step count at the vector step it ended in
    episode_return: float
    length: int


class Stretch(NamedTuple):
    """What one `advance` played and learned: rollouts one after another from the loop's step. Each but the last
    was complete and learned from; the last holds (or ends at) the next due point, and was learned from when it
    is complete."""

    ends: list[int]  # the env step at which each rollout's part of the stretch ends
    acting: TrainState  # the state that played the last rollout, its key advanced (on the update's device)
    state: TrainState | None  # after the last rollout's update (None: it is not complete), a failed agent's left
    # at its last good state
    read: Callable[[], tuple[list[list[list[Episode]]], list[dict[str, np.ndarray]]]]  # one read of the device,
    # made once everything is dispatched: per rollout, each agent's finished episodes in the order they ended, and
    # per rollout learned from, its update's metrics (a value per agent)
    started: float  # time.perf_counter() when the stretch's first update was dispatched


class Collector(Protocol):
    """What the loop needs of a collector: it plays rollouts and hands each complete one to the learner's update."""

    num_envs: int
    normalizer: Normalizer | None

    def start(self, env_seeds: list[int]) -> None:
        """Reset the envs, each agent's as in its standalone run (agent a's sub-env i seeded env_seeds[a] + i)."""

    def prepare(self, state: TrainState) -> None:
        """Compile ahead what the loop runs, for `state` (after `start`): the loop's time is training alone."""

    def advance(self, state: TrainState, timestep: int, due: int, alive: list[bool], should_stop) -> Stretch:
        """Play with `state` from env step `timestep`, and learn from each rollout it completes (the update of
        agents still `alive`), until the rollout that holds or ends at env step `due` (the next checkpoint,
        evaluation or the end) is complete, or total_timesteps ends it. The host collector stops at `due`, at the
        end of a rollout, or when should_stop() says so (checked before each vector step); a compiled one plays
        whole rollouts, and the loop checks should_stop at the due points inside the last."""

    def pending(self, timestep: int) -> tuple[dict[str, np.ndarray], int]:
        """The rollout as it stood at env step `timestep` (the loop's latest), for a checkpoint: its arrays and
        the vector steps collected."""

    def resume_pending(self, state: TrainState, arrays: dict[str, np.ndarray], filled: int) -> None:
        """Continue the partly collected rollout of a checkpoint (after `start`), `state` the checkpoint's."""

    def close(self) -> None: ...


def sample_to_play(network, params, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """sample_action's actions (what the update learns from), the same as the env takes them (env_action: clipped
    to the bounds, if continuous), and the key to use next: one program per vector step."""
    actions, key = sample_action(network, params, obs, key)
    return actions, env_action(network, actions), key


class RolloutBuffer:
    """Preallocated numpy arrays filled one vector step at a time."""

    def __init__(self, n_steps: int, num_envs: int, obs_dim: int, action_shape: tuple[int, ...] = (),
                 action_dtype=np.int32):
        self.obs = np.zeros((n_steps, num_envs, obs_dim), np.float32)
        self.actions = np.zeros((n_steps, num_envs, *action_shape), action_dtype)
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


def env_dims(envs: gym.vector.VectorEnv) -> EnvShape:
    """The shape of a vector env's sub-envs: their observation size and actions (discrete, or a Box)."""
    obs_dim, space = int(np.prod(envs.single_observation_space.shape)), envs.single_action_space
    if isinstance(space, gym.spaces.Box):
        return EnvShape(obs_dim, int(np.prod(space.shape)), continuous=True)
    return EnvShape(obs_dim, int(space.n))


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

    def __init__(self, envs: gym.vector.VectorEnv, learner: Learner, config: RunConfig, devices: Devices):
        self.envs, self.learner, self.config, self.devices = envs, learner, config, devices
        network = learner.network
        self.num_envs = config.num_envs
        obs_dim = env_dims(envs).obs_dim
        self.normalizer = None
        if config.normalize_observations or config.normalize_rewards:
            self.normalizer = Normalizer(obs_dim, config.num_envs, config.gamma,
                                         observations=config.normalize_observations, rewards=config.normalize_rewards)
        self.buffer = RolloutBuffer(config.n_steps, config.num_envs, obs_dim, network.action_shape,
                                    network.action_dtype)
        self.act = jax.jit(partial(sample_to_play, network))
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

    def prepare(self, state: TrainState) -> None:
        """Nothing: the programs this collector runs are small, and kept by JAX's persistent cache."""

    def advance(self, state: TrainState, timestep: int, due: int, alive: list[bool], should_stop) -> Stretch:
        taken, episodes, rollout, key = self.collect(state, timestep, due - timestep, should_stop)
        acting = state.replace(key=jax.device_put(key, self.devices.update))
        started, learned = time.perf_counter(), None
        if rollout is not None:
            learned = self.learner.update(acting, rollout, alive=np.bool_(alive[0]))

        def read():
            return [[episodes]], [] if learned is None else [jax.device_get(learned[1])]

        return Stretch([timestep + taken], acting, None if learned is None else learned[0], read, started)

    def collect(self, state: TrainState, timestep: int, max_steps: int, should_stop
                ) -> tuple[int, list[Episode], Rollout | None, jax.Array]:
        """Act with `state` from env step `timestep` until the rollout is full, `max_steps` env steps are taken,
        or should_stop() says so: (env steps taken, episodes finished, the rollout on the update's device when it
        filled up, the key advanced)."""
        config, buffer = self.config, self.buffer
        params, key = self._acting(state.params), jax.device_put(state.key, self.devices.act)
        value_fn = lambda o: self.value(params, o)  # noqa: E731
        taken, episodes = 0, []
        while not buffer.full and taken < max_steps and not should_stop():
            actions, played, key = self.act(params, self.obs, key)
            actions, played = jax.device_get((actions, played))  # one read for both
            out = step_envs(self.envs, played, value_fn, config.gamma, config.reward_scale, self.normalizer)
            buffer.add(self.obs, actions, out.rewards, out.dones)
            self.obs = out.obs
            taken += self.num_envs
            episodes += [Episode(timestep + taken, ret, length) for _, ret, length in out.episodes]
        rollout = buffer.rollout(self.obs, self.devices.update) if buffer.full else None
        return taken, episodes, rollout, key

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
