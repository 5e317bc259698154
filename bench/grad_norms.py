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

from checkpoints import restore_checkpoint
from jaxrl_lander.algos import a2c, ppo
from jaxrl_lander.algos.common import make_batch
from jaxrl_lander.envs import reset_envs, step_envs
from jaxrl_lander.rollout import RolloutBuffer


def loss_fn(config, learner):
    module = {"a2c": a2c, "ppo": ppo}[config.algo]
    return lambda params, batch: module.loss(params, learner.policy, batch, learner.hparams)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="an experiment directory (holds <name>_results.json)")
    parser.add_argument("--step", type=int, required=True, help="the checkpoint to restore")
    parser.add_argument("--rollouts", type=int, default=300)
    parser.add_argument("--seed", type=int, default=123, help="env and action-sampling seed of the probe")
    args = parser.parse_args()

    config, trainer, state = restore_checkpoint(args.experiment, args.step)
    params, learner = state.params, trainer.learner
    grad = jax.jit(jax.grad(loss_fn(config, learner)))

    # With normalisation, the checkpoint's statistics, continued over the probe's steps as training would.
    obs = reset_envs(trainer.envs, args.seed, trainer.normalizer)
    key = jax.random.key(args.seed)
    actor, critic = [], []
    for _ in range(args.rollouts):
        buffer = RolloutBuffer(config.n_steps, config.num_envs, trainer.obs_dim)
        while not buffer.full:
            actions, key = trainer.act(params, obs, key)
            actions = np.asarray(actions)
            step = step_envs(trainer.envs, actions, lambda o: trainer.value(params, o), config.gamma,
                             config.reward_scale, trainer.normalizer)
            buffer.add(obs, actions, step.rewards, step.dones)
            obs = step.obs
        batch = make_batch(learner.policy, params, buffer.rollout(obs), config.gamma, config.gae_lambda)
        g = grad(params, batch)["params"]
        actor.append(float(optax.global_norm(g["actor"])))
        critic.append(float(optax.global_norm(g["critic"])))
    trainer.envs.close()
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
