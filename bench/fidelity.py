"""Does envpool's LunarLander play like gymnasium's? Episode returns of gymnasium's own heuristic policy and of
uniformly random actions on both backends, with a two-sample Kolmogorov-Smirnov test per policy; the discrete
lander by default, the continuous one with --env-id LunarLanderContinuous-v3 (the heuristic's throttles, and
random ones uniform in [-1, 1]).

Prints one JSON line: per policy and backend the episodes, mean and std of the returns and the mean length, and
per policy the KS statistic and its p-value.
"""

import argparse
import json

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d.lunar_lander import heuristic
from scipy.stats import ks_2samp  # scipy comes with jax


class _Kind:
    """What gymnasium's heuristic reads of its env: whether its actions are continuous."""

    def __init__(self, continuous: bool):
        self.continuous = continuous

    @property
    def unwrapped(self):
        return self


def policies(continuous: bool) -> dict:
    """{name: policy(obs, rng) -> actions} for the discrete or the continuous lander."""
    kind = _Kind(continuous)

    def heuristic_actions(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.array([heuristic(kind, o) for o in obs], np.float32 if continuous else np.int64)

    def random_actions(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if continuous:
            return rng.uniform(-1.0, 1.0, size=(len(obs), 2)).astype(np.float32)
        return rng.integers(0, 4, size=len(obs))

    return {"heuristic": heuristic_actions, "random": random_actions}


def play(env_id: str, backend: str, policy, episodes: int, num_envs: int, seed: int) -> tuple[list[float], list[int]]:
    """Returns and lengths of the first `episodes` episodes to end."""
    rng = np.random.default_rng(seed)
    if backend == "envpool":
        import envpool

        envs = envpool.make(env_id, env_type="gymnasium", num_envs=num_envs, seed=seed)
        obs, _ = envs.reset()
    else:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
        obs, _ = envs.reset(seed=seed)
    returns, lengths = [], []
    running, steps = np.zeros(num_envs), np.zeros(num_envs, int)
    resets = np.zeros(num_envs, bool)  # both reset on the step after a done: that step is not the episode's
    while len(returns) < episodes:
        obs, rewards, terminated, truncated, _ = envs.step(policy(obs, rng))
        running = np.where(resets, 0.0, running + rewards)
        steps = np.where(resets, 0, steps + 1)
        done = np.logical_or(terminated, truncated)
        for i in np.flatnonzero(done):
            returns.append(float(running[i]))
            lengths.append(int(steps[i]))
        resets = done
    envs.close()
    return returns[:episodes], lengths[:episodes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=500, help="episodes per policy and backend")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-id", default="LunarLander-v3", choices=["LunarLander-v3", "LunarLanderContinuous-v3"])
    args = parser.parse_args()
    report = {"episodes": args.episodes}
    for name, policy in policies(args.env_id == "LunarLanderContinuous-v3").items():
        row = {}
        for backend in ("gymnasium", "envpool"):
            returns, lengths = play(args.env_id, backend, policy, args.episodes, args.num_envs, args.seed)
            row[backend] = {"mean": float(np.mean(returns)), "std": float(np.std(returns)),
                            "mean_length": float(np.mean(lengths))}
            row[backend]["returns"] = returns
        test = ks_2samp(row["gymnasium"]["returns"], row["envpool"]["returns"])
        row["ks_statistic"], row["ks_p_value"] = float(test.statistic), float(test.pvalue)
        for backend in ("gymnasium", "envpool"):
            del row[backend]["returns"]
        report[name] = row
    print(json.dumps(report))


if __name__ == "__main__":
    main()
