"""Stable-Baselines3 + rl-zoo3's tuned PPO for LunarLander: training time until the evaluation return first
reaches the threshold. Runs in the benchmark's own venv.

Every 50,000 steps, 10 deterministic episodes are played (their time excluded from the training time); the
run stops at the first evaluation whose mean reaches the threshold. Prints one JSON line.
"""

import argparse
import json
import time

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

# rl-zoo3's hyperparameters for LunarLander (hyperparams/ppo.yml).
ZOO_PPO = dict(n_steps=1024, batch_size=64, gamma=0.999, gae_lambda=0.98, n_epochs=4, ent_coef=0.01)
ZOO_ENVS = 16


class StopWhenSolved(BaseCallback):
    def __init__(self, every: int, episodes: int, threshold: float, eval_seed: int):
        super().__init__()
        self.every, self.episodes, self.threshold, self.eval_seed = every, episodes, threshold, eval_seed
        self.next_eval = every
        self.eval_seconds = 0.0
        self.evaluations = []

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next_eval:
            return True
        self.next_eval += self.every
        t = time.perf_counter()
        env = gym.make("LunarLander-v3")
        returns = []
        for j in range(self.episodes):
            obs, _ = env.reset(seed=self.eval_seed + j)
            done, total = False, 0.0
            while not done:
                action, _ = self.model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(int(action))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        env.close()
        self.eval_seconds += time.perf_counter() - t
        mean = sum(returns) / len(returns)
        training_seconds = time.perf_counter() - self.start - self.eval_seconds
        self.evaluations.append({"timestep": self.num_timesteps, "mean": mean, "training_seconds": training_seconds})
        return mean < self.threshold


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=1_500_000)
    parser.add_argument("--threshold", type=float, default=200.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = make_vec_env("LunarLander-v3", n_envs=ZOO_ENVS, seed=args.seed)
    model = PPO("MlpPolicy", env, seed=args.seed, device="cpu", verbose=0, **ZOO_PPO)
    callback = StopWhenSolved(50_000, 10, args.threshold, 2**31 + 1000 * args.seed)
    model.learn(total_timesteps=args.max_steps, callback=callback)
    solved = next((e for e in callback.evaluations if e["mean"] >= args.threshold), None)
    print(json.dumps({"seed": args.seed, "solved": solved, "evaluations": callback.evaluations}))


if __name__ == "__main__":
    main()
