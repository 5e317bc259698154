"""The gymnasium vector env: construction, one step turned into learning targets, the time-limit bootstrap.

The vector env resets a finished sub-env within the same step (AutoresetMode.SAME_STEP): the observation it
returns is the first of the next episode, and the true last observation is in info["final_obs"]. So every
transition in a rollout is a real (obs, action, reward) step; no reset-only transition exists to be masked.
"""

import dataclasses
import importlib.util
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from jaxrl_lander.config import ENV_IDS, EnvShape, RunConfig, check_env_id
from jaxrl_lander.envs.normalization import Normalizer
from jaxrl_lander.config.errors import ConfigError, first_line


def make_env(env_id: str, **kwargs) -> gym.Env:
    """gymnasium's env `env_id`, made only when the id is on the allow-list (config.ENV_IDS): the one way this
    package asks gymnasium for an env, so that no id can make it import a module."""
    return gym.make(check_env_id(env_id), **kwargs)


@dataclasses.dataclass(frozen=True)
class EnvChoice:
    """An env as a run plays it everywhere (its training envs, every evaluation, its saved model's replays):
    gymnasium's id and the keyword arguments of its options (RunConfig.env_options, {} for the defaults)."""

    env_id: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, config: RunConfig) -> "EnvChoice":
        return cls(config.env_id, config.env_options())

    def make(self, **kwargs) -> gym.Env:
        """One env; `kwargs` add gymnasium's own (render_mode, max_episode_steps)."""
        return make_env(self.env_id, **self.options, **kwargs)

    def make_vector(self, num_envs: int) -> gym.vector.VectorEnv:
        return make_vector_env(self.env_id, num_envs, **self.options)


def check_env(env_id: str) -> EnvShape:
    """The shape of `env_id`, or a ConfigError when it is not an env the policy can drive: on the allow-list,
    registered with gymnasium, its Box2D physics installed. It builds no env: the allow-list knows the shape of
    each (config.ENV_IDS)."""
    shape = ENV_IDS[check_env_id(env_id)]
    try:
        spec = gym.spec(env_id)
    except Exception as exc:  # gymnasium's NameNotFound, VersionNotFound
        raise ConfigError(f"env_id '{env_id}' cannot be made: {first_line(exc)}") from None
    if ".box2d." in str(spec.entry_point) and importlib.util.find_spec("Box2D") is None:
        raise ConfigError(f"env_id '{env_id}' cannot be made: its physics, Box2D, is not installed"
                          " (pip install 'gymnasium[box2d]'; make installs it)")
    return shape


def make_vector_env(env_id: str, num_envs: int, **options) -> gym.vector.VectorEnv:
    """A synchronous vector env with same-step autoreset and per-episode return/length statistics; `options` are
    the env's keyword arguments (EnvChoice.make_vector passes a config's)."""
    envs = gym.make_vec(
        check_env_id(env_id),
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **options,
    )
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def finished_episodes(info: dict) -> list[tuple[int, float, int]]:
    """(sub-env index, return, length) of each episode that ended in this vector step."""
    if "episode" not in info:
        return []
    done = info["_episode"]
    stats = info["episode"]
    return [(int(i), float(stats["r"][i]), int(stats["l"][i])) for i in np.flatnonzero(done)]


def bootstrap_truncated(
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    info: dict,
    value_fn: Callable[[np.ndarray], np.ndarray],
    gamma: float,
) -> np.ndarray:
    """Rewards with gamma * V(final obs) added where an episode was cut by the time limit.

    A truncated episode did not end in the MDP, so its return continues past the cut: the value of the true
    final observation stands in for it. A terminated episode gets nothing added (its future return is zero).
    value_fn takes a full (num_envs, obs_dim) batch so its compiled shape never changes.
    """
    cut = np.logical_and(truncated, np.logical_not(terminated))
    if not cut.any():
        return rewards
    final_obs = np.zeros((len(rewards), *info["final_obs"][np.flatnonzero(cut)[0]].shape), dtype=np.float32)
    for i in np.flatnonzero(cut):
        final_obs[i] = info["final_obs"][i]
    values = np.asarray(value_fn(final_obs), dtype=np.float64)
    return rewards + gamma * values * cut


def reset_envs(envs: gym.vector.VectorEnv, seed: int, normalizer: Normalizer | None = None) -> np.ndarray:
    """Reset every sub-env (sub-env i seeded seed + i); the first observations, normalised with a `normalizer`
    (whose statistics take them in, as step_envs does with every later one)."""
    obs, _ = envs.reset(seed=seed)
    return obs if normalizer is None else normalizer.observations(obs)


class VectorStep(NamedTuple):
    """What the learner keeps of one vector-env step."""

    obs: np.ndarray  # (B, obs_dim) next observations; the first of a new episode where one ended
    rewards: np.ndarray  # (B,) float32, scaled, time-limit bootstrap added
    dones: np.ndarray  # (B,) bool, the episode ended (terminated or truncated) with this step
    episodes: list[tuple[int, float, int]]  # (sub-env, return, length) of episodes that ended


def step_envs(
    envs: gym.vector.VectorEnv,
    actions: np.ndarray,
    value_fn: Callable[[np.ndarray], np.ndarray],
    gamma: float,
    reward_scale: float = 1.0,
    normalizer: Normalizer | None = None,
) -> VectorStep:
    """Step every sub-env once and turn the outcome into learning targets.

    With a `normalizer`, the returned observations and rewards are normalised (its statistics updated with
    this step) and the bootstrap value is that of the normalised final observation. Rewards are scaled by
    `reward_scale` before the bootstrap (values are in scaled units); the episode statistics stay in the env's
    own units.
    """
    obs, rewards, terminated, truncated, info = envs.step(actions)
    dones = np.logical_or(terminated, truncated)
    if normalizer is not None:
        obs = normalizer.observations(obs)
        rewards = normalizer.rewards(rewards, dones)
        raw_value_fn = value_fn
        value_fn = lambda final_obs: raw_value_fn(normalizer.observations(final_obs, update=False))  # noqa: E731
    with np.errstate(over="ignore"):  # a reward scaled past float32 becomes inf: the update reports it, once
        rewards = bootstrap_truncated(rewards * reward_scale, terminated, truncated, info, value_fn, gamma)
        rewards = rewards.astype(np.float32)
    return VectorStep(
        obs=obs,
        rewards=rewards,
        dones=dones,
        episodes=finished_episodes(info),
    )
