"""Hand-built gymnasium envs whose right answers are known in closed form (registered on import)."""

import gymnasium as gym
import numpy as np

from jaxrl_lander.config import allow_env_id


class Countdown(gym.Env):
    """obs = [steps taken in this episode]; reward 1 per step; action 1 terminates the episode."""

    observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, bool(action == 1), False, {}


class OneStep(gym.Env):
    """One step, reward +1 whatever the action: V(s) = 1."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 1.0, True, False, {}


class TwoStep(gym.Env):
    """obs [0] then [1]; reward 0 then 1, then the end: V([1]) = 1 and V([0]) = gamma."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 1:
            return np.ones(1, np.float32), 0.0, False, False, {}
        return np.ones(1, np.float32), 1.0, True, False, {}


class MatchSign(gym.Env):
    """One step; obs is -1 or +1 at random; reward +1 for action 1 on +1 or action 0 on -1, else -1."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.sign = 1.0 if self.np_random.random() < 0.5 else -1.0
        return np.array([self.sign], np.float32), {}

    def step(self, action):
        right = (action == 1) == (self.sign > 0)
        return np.array([self.sign], np.float32), 1.0 if right else -1.0, True, False, {}


for _cls, _limit in ((Countdown, 3), (OneStep, None), (TwoStep, None), (MatchSign, None)):
    _id = f"JaxrlLanderTest/{_cls.__name__}-v0"
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls, max_episode_steps=_limit)
    allow_env_id(_id, obs_dim=1, action_size=2)


class NanReward(gym.Env):
    """Never ends and pays NaN: the first update's loss is not finite."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float("nan"), False, False, {}


if "JaxrlLanderTest/NanReward-v0" not in gym.registry:
    gym.register(id="JaxrlLanderTest/NanReward-v0", entry_point=NanReward)
allow_env_id("JaxrlLanderTest/NanReward-v0", obs_dim=1, action_size=2)
