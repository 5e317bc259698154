"""Where the gradient of a trained run's loss comes from: actor against critic, and how often clipping bites.

Restores one checkpoint of an experiment, collects rollouts with its (sampling) policy on the training
config, and for each rollout takes the gradient of the algorithm's loss at those parameters, as the update
would (for PPO, over the whole rollout as one minibatch, at ratio 1). Prints the median and 90th percentile of the
global gradient norm of the actor's and the critic's parameters, how often the total norm exceeds
max_grad_norm, and the median factor clipping scales the step by.

    .venv/bin/python bench/grad_norms.py results/experiments/a2c_seed1 --step 500000
"""

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
import optax

from checkpoints import experiment_learner, restore_checkpoint
from jaxrl_lander.core.algos import ALGORITHMS
from jaxrl_lander.core.algos.base import make_batch
from jaxrl_lander.training.collect import HostCollector
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.training.runtime import Devices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="an experiment directory (holds <name>_results.json)")
    parser.add_argument("--step", type=int, required=True, help="the checkpoint to restore")
    parser.add_argument("--rollouts", type=int, default=300)
    parser.add_argument("--seed", type=int, default=123, help="env and action-sampling seed of the probe")
    args = parser.parse_args()

    config, learner, _ = experiment_learner(args.experiment)
    state, meta = restore_checkpoint(args.experiment, learner, args.step)
    loss = ALGORITHMS[config.algo].loss
    grad = jax.jit(jax.grad(lambda params, batch: loss(params, learner.network, batch, learner.hparams)[0]))

    # The training collector, acting with the checkpoint's parameters (never updated) and, with normalisation,
    # its statistics, continued over the probe's steps as training would.
    envs = EnvChoice.of(config).make_vector(config.num_envs)
    collector = HostCollector(envs, learner, config, Devices.resolve())
    if collector.normalizer is not None:
        collector.normalizer.load_state_dict(meta["normalizer"])
    acting = state.replace(key=jax.random.key(args.seed))
    collector.start(env_seeds=[args.seed])
    actor, critic = [], []
    for _ in range(args.rollouts):
        _, _, rollout, key = collector.collect(acting, 0, config.rollout_size, lambda: False)
        acting = acting.replace(key=key)
        batch = make_batch(learner.network, state.params, rollout, config.gamma, config.gae_lambda)
        g = grad(state.params, batch)["params"]
        actor.append(float(optax.global_norm(g["actor"])))
        critic.append(float(optax.global_norm(g["critic"])))
    collector.close()
    actor, critic = np.array(actor), np.array(critic)
    total = np.hypot(actor, critic)
    print(f"{args.experiment.name} at step {args.step}, {args.rollouts} rollouts of {config.rollout_size}:")
    print(f"  actor gradient norm:  median {np.median(actor):.3g}, 90th percentile {np.percentile(actor, 90):.3g}")
    print(f"  critic gradient norm: median {np.median(critic):.3g}, 90th percentile {np.percentile(critic, 90):.3g}")
    print(f"  total norm above max_grad_norm {config.max_grad_norm}: {100 * np.mean(total > config.max_grad_norm):.0f}%"
          f" of rollouts; median clip factor {np.median(np.minimum(1.0, config.max_grad_norm / total)):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
