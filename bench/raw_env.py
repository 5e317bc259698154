"""The limit: raw step throughput of the vector env jaxrl_lander trains on, with random actions, no learning.

Prints one JSON line: {"num_envs", "steps", "seconds", "steps_per_second"}.
"""

import argparse
import json
import time

import numpy as np

from jaxrl_lander.envs.gymnasium import make_vector_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    envs = make_vector_env("LunarLander-v3", args.num_envs)
    envs.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    vector_steps = args.steps // args.num_envs
    actions = rng.integers(0, envs.single_action_space.n, size=(vector_steps, args.num_envs))
    start = time.perf_counter()
    for a in actions:
        envs.step(a)
    seconds = time.perf_counter() - start
    envs.close()
    steps = vector_steps * args.num_envs
    print(json.dumps({"num_envs": args.num_envs, "steps": steps, "seconds": seconds,
                      "steps_per_second": steps / seconds}))


if __name__ == "__main__":
    main()
