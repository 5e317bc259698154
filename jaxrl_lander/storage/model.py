"""The final policy as a standalone orbax model: its parameters, as their ordinary tree, and its spec (JSON)."""

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jaxrl_lander.config import ENV_OPTIONS, check_env_id, make_config
from jaxrl_lander.config.errors import ConfigError, UnreadableModel, first_line
from jaxrl_lander.config.redact import shorten
from jaxrl_lander.storage.checkpoint import orbax_writes


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a saved model needs besides its parameters: how to rebuild the network and feed it, and where from."""

    algo: str
    env_id: str
    seed: int
    timestep: int  # the env step of the delivered parameters
    obs_dim: int
    num_actions: int
    hidden_size: int
    first_eval_seed: int  # the final evaluation's first episode seed: `evaluate` replays it by default
    observation_normalization: dict[str, Any] | None  # the observation statistics, when trained with them
    env_options: dict[str, Any]  # RunConfig.env_options: the options the env is made with, {} for the defaults

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "ModelSpec":
        """The spec saved with a model, each value checked (ValueError naming the first that is not usable): a
        model's files may have been edited, and its env_id is handed to gymnasium. A model saved before env options
        were recorded has none: it plays the default env."""
        names = {f.name for f in dataclasses.fields(cls)}
        saved = {"env_options": {}, **saved}
        if set(saved) != names:
            raise ValueError(f"model spec keys {sorted(saved)} are not {sorted(names)}")
        for name, least in (("seed", 0), ("timestep", 0), ("first_eval_seed", 0), ("obs_dim", 1),
                            ("num_actions", 1), ("hidden_size", 1)):
            value = saved[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"its spec's {name} must be an integer >= {least}, got {shorten(value)}")
        if saved["algo"] not in ("ppo", "a2c"):
            raise ValueError(f"its spec's algo must be ppo or a2c, got {shorten(saved['algo'])}")
        check_env_id(saved["env_id"])
        options = saved["env_options"]
        if not isinstance(options, dict) or not set(options) <= set(ENV_OPTIONS):
            raise ValueError(f"its spec's env_options must be an object of {', '.join(ENV_OPTIONS)}, got"
                             f" {shorten(options)}")
        try:  # the config's checks: ranges, types, wind strengths only with wind
            saved["env_options"] = make_config(saved["algo"], {**options, "env_id": saved["env_id"]},
                                               source="the model's spec").env_options()
        except ConfigError as exc:
            raise ValueError(f"its spec's env_options: {exc}") from None
        if not isinstance(saved["observation_normalization"], (dict, type(None))):
            raise ValueError("its spec's observation_normalization must be an object or null")
        return cls(**saved)


def _swap_sides(path: Path) -> tuple[Path, Path]:
    """Where a model is written before it replaces the one at `path`, and where that one waits meanwhile."""
    return path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")


def save_model(path: str | Path, params, spec: ModelSpec) -> None:
    """Save final policy parameters and their spec (JSON) as one orbax checkpoint at `path`. A model already there
    stays whole until the new one is complete (a resumed run delivers its model again): the new one is written
    beside it, then swapped in by two renames; recover_model mends a kill between them."""
    path = Path(path).absolute()
    staged, old = _swap_sides(path)
    shutil.rmtree(staged, ignore_errors=True)
    with orbax_writes(f"the model {path.name}"), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            staged,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params), policy=ocp.args.JsonSave(spec.to_dict())),
            force=True,
        )
    if path.exists():
        os.rename(path, old)
    os.rename(staged, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_model(path: str | Path) -> None:
    """Undo a model swap that a kill interrupted (called with the experiment's lock held): the model the results
    name goes back in place, and what the swap left beside it goes."""
    path = Path(path).absolute()
    staged, old = _swap_sides(path)
    if old.exists() and not path.exists():
        os.rename(old, path)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)


def model_spec(path: str | Path) -> ModelSpec | None:
    """The spec saved with the model at `path`, without its parameters; None when there is none to read."""
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(Path(path).absolute(),
                                            args=ocp.args.Composite(policy=ocp.args.JsonRestore()))
        return ModelSpec.from_dict(dict(restored.policy))
    except Exception:  # orbax and tensorstore raise many kinds; any of them means unreadable
        return None


def load_model(path: str | Path) -> tuple[Any, ModelSpec]:
    """(params, spec) from a directory written by save_model; UnreadableModel if it cannot be read."""
    path = Path(path).absolute()
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(
                path, args=ocp.args.Composite(params=ocp.args.StandardRestore(), policy=ocp.args.JsonRestore())
            )
        return restored.params, ModelSpec.from_dict(dict(restored.policy))
    except Exception as exc:  # orbax and tensorstore raise many kinds; any of them means unreadable
        raise UnreadableModel(f"model {path} is unreadable ({first_line(exc)})") from None
