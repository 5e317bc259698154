"""Would keeping the best checkpoint help? Re-evaluate each run's best checkpoint on fresh episodes.

For every experiment of a sweep (or one experiment), takes the evaluation during training with the highest
mean (eval_interval, eval_interval_episodes), restores the checkpoint saved at that step and plays
--episodes deterministic episodes on seeds no training or evaluation of the run used (from 3 * 2**30 on;
training seeds lie below 2**30 + num_envs, evaluation seeds in [2**31, 3 * 2**30)). The gap between the two
numbers is how much picking the best of several noisy evaluations flatters a checkpoint.

    .venv/bin/python bench/best_checkpoint.py results/sweeps/a2c_long --episodes 100
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from checkpoints import restore_checkpoint
from jaxrl_lander.evaluate import run_episodes

FRESH_SEED = 3 * 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a sweep directory (holds experiments/) or one experiment directory")
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()

    experiments = [args.path] if not (args.path / "experiments").is_dir() else sorted(
        (args.path / "experiments").iterdir())
    for experiment in experiments:
        evaluations = json.loads(next(experiment.glob("*_results.json")).read_text())["evaluations_during_training"]
        if not evaluations:
            print(f"{experiment.name}: no evaluations during training (eval_interval = 0)", file=sys.stderr)
            return 2
        best = max(evaluations, key=lambda e: e["mean"])
        if not (experiment / "checkpoints" / str(best["timestep"])).is_dir():
            print(f"{experiment.name}: no checkpoint at step {best['timestep']}, the best evaluation (eval_interval "
                  "must be a multiple of checkpoint_interval, with all checkpoints kept)", file=sys.stderr)
            return 2
        config, trainer, state = restore_checkpoint(experiment, best["timestep"])
        trainer.envs.close()
        returns = [e["return"] for e in run_episodes(trainer.greedy(state.params), config.env_id, args.episodes,
                                                     FRESH_SEED)]
        print(f"{experiment.name}: best evaluation during training {best['mean']:.1f} ({best['episodes']} episodes) "
              f"at step {best['timestep']}; that checkpoint on {args.episodes} fresh episodes: "
              f"{np.mean(returns):.1f} +/- {np.std(returns):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
