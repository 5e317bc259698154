"""Does envpool's LunarLander play like gymnasium's? Episode returns of gymnasium's own heuristic policy and of
uniformly random actions on both backends, with a two-sample Kolmogorov-Smirnov test per policy.

Prints one JSON line: per policy and backend the episodes, mean and std of the returns and the mean length, and
per policy the KS statistic and its p-value.
"""

import argparse
import json

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d.lunar_lander import heuristic
from scipy.stats import ks_2samp  # scipy comes with jax


class _Discrete:
    """What gymnasium's heuristic reads of its env: that its actions are discrete."""

    continuous = False

    @property
    def unwrapped(self):
        return self


def heuristic_actions(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([heuristic(_Discrete(), o) for o in obs])


def random_actions(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 4, size=len(obs))


POLICIES = {"heuristic": heuristic_actions, "random": random_actions}


def play(backend: str, policy, episodes: int, num_envs: int, seed: int) -> tuple[list[float], list[int]]:
    """Returns and lengths of the first `episodes` episodes to end."""
    rng = np.random.default_rng(seed)
    if backend == "envpool":
        import envpool

        envs = envpool.make("LunarLander-v3", env_type="gymnasium", num_envs=num_envs, seed=seed)
        obs, _ = envs.reset()
    else:
        envs = gym.make_vec("LunarLander-v3", num_envs=num_envs, vectorization_mode="sync",
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
    args = parser.parse_args()
    report = {"episodes": args.episodes}
    for name, policy in POLICIES.items():
        row = {}
        for backend in ("gymnasium", "envpool"):
            returns, lengths = play(backend, policy, args.episodes, args.num_envs, args.seed)
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
