"""Which checkpoint should a run deliver? Judge every evaluated checkpoint on the same fresh episodes.

For every experiment of a sweep (or one experiment), restores the checkpoint of each evaluation during training
(eval_interval must be a multiple of checkpoint_interval, all checkpoints kept) and plays --episodes
deterministic episodes on seeds no training or evaluation of the run used (from 3 * 2**30 on; training seeds lie
below 2**30 + num_envs, evaluation seeds in [2**31, 3 * 2**30)). Then it reports, on those episodes, what each
way of choosing would have delivered:

    last       the last parameters
    best       the best evaluation during training
    best@N     the best of the evaluations at multiples of --every N steps (say, a sparser eval_interval)
    delivered  the checkpoint the run delivered (its model; the last parameters without select_best_checkpoint)
    oracle     the checkpoint that plays best on these very episodes (an upper bound, not a rule)

The gap between a checkpoint's evaluation during training and its score here is how much picking the best of
several noisy evaluations flatters it.

    .venv/bin/python bench/best_checkpoint.py results/sweeps/a2c_solve --episodes 100 --every 100000
"""

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from checkpoints import experiment_learner
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.training.evaluate import run_episodes
from jaxrl_lander.storage.files import ExperimentPaths
from jaxrl_lander.training.selection import checkpoint_policy, ranked_evaluations

FRESH_SEED = 3 * 2**30


def judge(experiment: Path, episodes: int, every: int | None) -> dict[str, tuple[int, float]] | str:
    """{rule: (step, mean return on the fresh episodes)}, or why the experiment cannot be judged."""
    config, learner, results = experiment_learner(experiment)
    evaluations = results.evaluations_during_training
    if not evaluations:
        return "no evaluations during training (eval_interval = 0)"
    missing = [e["timestep"] for e in evaluations if not (experiment / "checkpoints" / str(e["timestep"])).is_dir()]
    if missing:
        return f"no checkpoint at step {missing[0]} (eval_interval must be a multiple of checkpoint_interval)"
    scores = {}
    store, template = CheckpointStore(ExperimentPaths.at(experiment).checkpoints), learner.init(jax.random.key(0))
    for evaluation in evaluations:
        policy = checkpoint_policy(store, evaluation["timestep"], template, learner.network)
        played = run_episodes(policy, EnvChoice.of(config), episodes, FRESH_SEED)
        scores[evaluation["timestep"]] = float(np.mean([e["return"] for e in played]))
    store.close()
    last = results.total_timesteps
    if last not in scores:
        return f"no evaluation at the last step {last} (total_timesteps must be a multiple of eval_interval)"
    selected = results.selected_checkpoint
    choices = {
        "last": last,
        "best": ranked_evaluations(evaluations, 1)[0]["timestep"],
        "delivered": selected["timestep"] if selected else last,
        "oracle": max(scores, key=scores.get),
    }
    if every:
        sparse = [e for e in evaluations if e["timestep"] % every == 0]
        if sparse:
            choices[f"best@{every}"] = ranked_evaluations(sparse, 1)[0]["timestep"]
    return {rule: (step, scores[step]) for rule, step in choices.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a sweep directory (holds experiments/) or one experiment directory")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--every", type=int, default=None, help="also the best of the evaluations at multiples of this")
    parser.add_argument("--threshold", type=float, default=200.0)
    args = parser.parse_args()

    experiments = [args.path] if not (args.path / "experiments").is_dir() else sorted(
        (args.path / "experiments").iterdir(), key=lambda p: int(p.name.rsplit("seed", 1)[-1]))
    table: dict[str, list[float]] = {}
    for experiment in experiments:
        judged = judge(experiment, args.episodes, args.every)
        if isinstance(judged, str):
            print(f"{experiment.name}: {judged}", file=sys.stderr)
            return 2
        print(f"{experiment.name}: " + ", ".join(f"{rule} {score:.1f} (step {step})"
                                                 for rule, (step, score) in judged.items()), flush=True)
        for rule, (_, score) in judged.items():
            table.setdefault(rule, []).append(score)
    print(f"over {len(experiments)} runs, {args.episodes} fresh episodes each:")
    for rule, scores in table.items():
        solved = sum(s >= args.threshold for s in scores)
        print(f"  {rule:>12}: {solved}/{len(scores)} at {args.threshold:g} or more, mean {np.mean(scores):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
