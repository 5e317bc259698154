"""A new experiment started from what another one delivered (`train --init-from`): its model's parameters and
observation statistics, and the reward statistics of its checkpoint at the model's step, with a fresh optimiser,
the new config's keys and its own envs (Stable-Baselines3's load, change, learn)."""

import dataclasses
import logging
from pathlib import Path
from typing import Any

from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.config import EnvShape, RunConfig
from jaxrl_lander.config.errors import ConfigError, ResumeError, first_line
from jaxrl_lander.training.evaluate import load_agent
from jaxrl_lander.storage.files import ExperimentPaths, model_path

log = logging.getLogger("jaxrl_lander")


@dataclasses.dataclass(frozen=True)
class StartingPoint:
    """Parameters and normaliser statistics to start from, and what the results JSON records of their source."""

    params: Any
    observations: dict[str, Any] | None  # the observation statistics the model standardises its inputs with
    returns: dict[str, Any] | None  # the reward statistics of the source's checkpoint at the model's step
    record: dict[str, Any]  # model, algorithm, seed, timestep, env_id of the source


def load_starting_point(path: str | Path, config: RunConfig, shape: EnvShape) -> StartingPoint:
    """The starting point in the model or experiment directory `path` for a run of `config` on an env of `shape`;
    ConfigError when it cannot start that run (another network, inputs the config would not standardise),
    UnreadableModel when it cannot be read."""
    model = model_path(path).absolute()
    policy, spec = load_agent(model)
    if (spec.obs_dim, spec.num_actions, policy.network.continuous) != tuple(shape):
        kind = lambda continuous: "continuous" if continuous else "discrete"  # noqa: E731
        raise ConfigError(f"--init-from {model}: its policy takes {spec.obs_dim} observations and {spec.num_actions}"
                          f" {kind(policy.network.continuous)} actions, {config.env_id} has {shape.obs_dim} and"
                          f" {shape.action_size} {kind(shape.continuous)}")
    if spec.hidden_size != config.hidden_size:
        raise ConfigError(f"--init-from {model}: its network has hidden_size {spec.hidden_size}, the config"
                          f" {config.hidden_size}; set hidden_size = {spec.hidden_size}")
    if config.log_std_init != 0.0:  # a start value, and the start is the model's: the config's would be a false record
        raise ConfigError(f"--init-from {model}: the policy's log-std starts where the model's is, not at log_std_init"
                          f" {config.log_std_init}; leave log_std_init at 0")
    if spec.observation_normalization is not None and not config.normalize_observations:
        raise ConfigError(f"--init-from {model}: its policy standardises its observations; set"
                          " normalize_observations = true to train it on")
    if spec.algo != config.algo:  # the same actor-critic: allowed, and said
        log.info("starting %s from a model that %s trained (they share the actor-critic)", config.algo, spec.algo)
    returns = _reward_statistics(model, spec.timestep) if config.normalize_rewards else None
    record = {"model": str(model), "algorithm": spec.algo, "seed": spec.seed, "timestep": spec.timestep,
              "env_id": spec.env_id, "reward_statistics": returns is not None}
    return StartingPoint(policy.params, spec.observation_normalization, returns, record)


def _reward_statistics(model: Path, step: int) -> dict[str, Any] | None:
    """The reward normaliser's statistics saved with the source's checkpoint at `step` (None when the source kept
    no such checkpoint, or trained without reward normalisation: the new run's start from scratch)."""
    checkpoint = ExperimentPaths.at(model.parent).checkpoints / str(step)
    if not checkpoint.is_dir():
        return None
    store = CheckpointStore(checkpoint.parent)
    try:
        normalizer = store.run_metadata(step)["normalizer"]
    except Exception as exc:  # orbax and tensorstore raise many kinds; any of them means unreadable
        raise ResumeError(f"--init-from: checkpoint {checkpoint} is unreadable ({first_line(exc)})") from None
    finally:
        store.close()
    return normalizer and normalizer.get("returns")
