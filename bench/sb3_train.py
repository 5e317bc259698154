"""Stable-Baselines3 side of the benchmark: the same experiment, timed. Runs in the benchmark's own venv.

Prints one JSON line: {"algo", "steps", "learn_seconds", "steps_per_second", "checkpoints"}, and with
--eval-episodes N also "evaluation": the returns of N deterministic episodes, episode j seeded eval_seed + j.
--hyperparameters takes the keyword arguments of SB3's PPO or A2C as JSON instead of the seed document's
(bench/parity.py writes them from a jaxrl_lander config); "linear_lr": true there decays learning_rate to 0, and
"normalize": {"norm_obs": ..., "norm_reward": ...} wraps the training env in VecNormalize (its observation
statistics then also apply to the evaluation episodes). --env-id and --env-options (gymnasium's keyword arguments
as JSON) choose the env, the continuous lander and the windy one included, for training and evaluation alike.
"""

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

# The seed document's hyperparameters; the rollout layout matches jaxrl_lander's defaults (8 envs).
HYPERPARAMETERS = {
    "ppo": dict(learning_rate=3e-4, n_steps=256, batch_size=64, n_epochs=10, gamma=0.99, gae_lambda=0.95,
                clip_range=0.2, ent_coef=0.01),
    "a2c": dict(learning_rate=7e-4, n_steps=5, gamma=0.99, gae_lambda=1.0, normalize_advantage=True),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--algo", choices=sorted(HYPERPARAMETERS), required=True)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--checkpoint-interval", type=int, default=1_000, help="env steps; 0 turns checkpoints off")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--eval-episodes", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=2**31)
    parser.add_argument("--hyperparameters", type=json.loads, default=None,
                        help="JSON keyword arguments for the SB3 class, replacing the seed's hyperparameters")
    parser.add_argument("--env-id", default="LunarLander-v3")
    parser.add_argument("--env-options", type=json.loads, default={},
                        help="JSON keyword arguments of the env (gravity, enable_wind, ...)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="PyTorch intra-op threads; 1 was as fast as 2 here, and does not fight a second job")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    env = make_vec_env(args.env_id, n_envs=args.num_envs, seed=args.seed, env_kwargs=args.env_options)
    cls = {"ppo": PPO, "a2c": A2C}[args.algo]
    kwargs = dict(args.hyperparameters if args.hyperparameters is not None else HYPERPARAMETERS[args.algo])
    normalize = kwargs.pop("normalize", None)
    if normalize:
        env = VecNormalize(env, gamma=kwargs["gamma"], **normalize)
    if kwargs.pop("linear_lr", False):
        start_lr = kwargs["learning_rate"]
        kwargs["learning_rate"] = lambda progress_remaining: progress_remaining * start_lr
    model = cls("MlpPolicy", env, seed=args.seed, device="cpu", verbose=0, **kwargs)
    callbacks = []
    if args.checkpoint_interval:
        # save_freq counts vector steps, each of num_envs env steps.
        callbacks.append(CheckpointCallback(save_freq=max(args.checkpoint_interval // args.num_envs, 1),
                                            save_path=str(args.out / "checkpoints")))
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps, callback=callbacks)
    learn_seconds = time.perf_counter() - start
    model.save(args.out / "model")
    checkpoints = len(list((args.out / "checkpoints").glob("*.zip"))) if args.checkpoint_interval else 0
    report = {"algo": args.algo, "steps": model.num_timesteps, "learn_seconds": learn_seconds,
              "steps_per_second": model.num_timesteps / learn_seconds, "checkpoints": checkpoints}
    if args.eval_episodes:
        env.training = False  # evaluation reads the statistics and leaves them as training left them
        standardize = env.normalize_obs if normalize and normalize["norm_obs"] else (lambda obs: obs)
        report["evaluation"] = evaluate(model, gym.make(args.env_id, **args.env_options), args.eval_episodes,
                                        args.eval_seed, standardize)
    print(json.dumps(report))


def evaluate(model, env: gym.Env, episodes: int, seed: int, standardize) -> list[float]:
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    returns = []
    for j in range(episodes):
        obs, _ = env.reset(seed=seed + j)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(standardize(obs), deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action) if discrete else action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


if __name__ == "__main__":
    main()
