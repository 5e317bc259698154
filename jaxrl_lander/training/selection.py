"""Which parameters a completed run delivers: the last ones, or with select_best_checkpoint the checkpoint of
a run's best evaluation during training; with several candidates, the one that plays best on further episodes.
"""

import dataclasses
import logging
from typing import Any

from jaxrl_lander.core.algos.base import TrainState
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.config import RunConfig
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.training.evaluate import Policy, brief, evaluate
from jaxrl_lander.core.policy import ActorCritic
from jaxrl_lander.training.seeding import EvalSeeds

log = logging.getLogger("jaxrl_lander")


def ranked_evaluations(evaluations: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The `count` best evaluations during training, best first (the earlier first, on a tie)."""
    return sorted(evaluations, key=lambda e: -e["mean"])[:count]


def checkpoint_policy(store: CheckpointStore, step: int, template: TrainState, network: ActorCritic) -> Policy:
    """The policy of the checkpoint at `step`, with the observation statistics saved beside it."""
    state, meta = store.restore(step, template)
    normalizer = meta["normalizer"]
    return Policy(network, state.params, normalizer["observations"] if normalizer else None)


@dataclasses.dataclass
class Delivery:
    """The parameters a run delivers (as a policy), and what the results JSON says of the choice."""

    step: int
    policy: Policy
    selected: dict[str, Any] | None = None  # the results JSON's selected_checkpoint
    evaluation: dict[str, Any] | None = None  # the final evaluation, when the choice already played it


def select_checkpoint(config: RunConfig, store: CheckpointStore, template: TrainState, last: Policy,
                      last_step: int, evaluations: list[dict[str, Any]], name: str) -> Delivery:
    """Evaluate the last parameters, then the candidates: the checkpoints of the best `selection_candidates`
    evaluations during training; with several, each plays the same `selection_episodes` further episodes and the
    best mean there wins (the better evaluation during training, on a tie)."""
    seeds = EvalSeeds.of(config)
    last_evaluation = evaluate(last, EnvChoice.of(config), config.eval_episodes, seeds.final, timed=True)
    candidates = []
    for evaluation in ranked_evaluations(evaluations, config.selection_candidates):
        policy = checkpoint_policy(store, evaluation["timestep"], template, last.network)
        replay = None
        if config.selection_episodes:
            replay = brief(evaluate(policy, EnvChoice.of(config), config.selection_episodes, seeds.selection))
            log.info("%s: the checkpoint at step %d (evaluation during training %.1f) plays %.1f",
                     name, evaluation["timestep"], evaluation["mean"], replay["mean"])
        record = {"timestep": evaluation["timestep"], "evaluation_during_training": evaluation["mean"],
                  "selection_evaluation": replay}
        candidates.append((record, policy))
    record, policy = candidates[0]
    if config.selection_episodes:
        record, policy = max(candidates, key=lambda c: c[0]["selection_evaluation"]["mean"])
    log.info("%s: delivering the checkpoint at step %d (evaluation during training %.1f; last parameters %.1f)",
             name, record["timestep"], record["evaluation_during_training"], last_evaluation["mean"])
    selected = {"timestep": record["timestep"], "evaluation_during_training": record["evaluation_during_training"],
                "last_parameters_evaluation": brief(last_evaluation), "candidates": [c[0] for c in candidates]}
    # The last step's checkpoint holds the last parameters and statistics: their evaluation is the verdict.
    reuse = last_evaluation if record["timestep"] == last_step else None
    return Delivery(record["timestep"], policy, selected, reuse)
