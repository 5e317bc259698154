"""Run configuration: frozen dataclasses, TOML loading and validation.

Every hyperparameter of a run lives here, with its default; `configs/*.toml` spell the same values out.
"""

import dataclasses
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration or command-line value is unusable; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Fields shared by every algorithm."""

    algo: str = ""
    """Algorithm name: "ppo" or "a2c"."""
    env_id: str = "LunarLander-v3"
    """Gymnasium environment id."""
    seed: int = 42
    """The one seed every PRNG key and env seed is derived from."""
    total_timesteps: int = 50_000
    """Environment steps to train for (summed over the vector env)."""
    num_envs: int = 8
    """Sub-environments in the gymnasium vector env."""
    n_steps: int = 256
    """Steps per sub-environment in one rollout; a rollout holds num_envs * n_steps transitions."""
    learning_rate: float = 3e-4
    """Optimiser step size."""
    anneal_lr: bool = False
    """Decay the step size linearly to 0 over total_timesteps (rl-zoo3's "lin_" schedules)."""
    gamma: float = 0.99
    """Discount factor."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before learning (values live in the scaled units); records stay raw."""
    normalize_observations: bool = False
    """Standardise observations by their running mean and variance over training, clipped to [-10, 10]."""
    normalize_rewards: bool = False
    """Divide rewards by the running std of the discounted return, clipped to [-10, 10] (VecNormalize's)."""
    gae_lambda: float = 0.95
    """GAE lambda; 1.0 gives Monte-Carlo advantages bootstrapped at the rollout end."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Gradients are clipped to this global norm."""
    adam_eps: float = 1e-5
    """Adam epsilon (the PyTorch/SB3 value): PPO, and A2C with optimizer = "adam"."""
    normalize_advantage: bool = True
    """Standardise advantages (per minibatch for PPO, per rollout for A2C)."""
    hidden_size: int = 64
    """Width of each of the two hidden layers of the actor and of the critic."""
    checkpoint_interval: int = 1_000
    """Save an orbax checkpoint every this many environment steps."""
    keep_checkpoints: int = 0
    """Keep only the newest N checkpoints; 0 keeps all."""
    recording_interval: int = 100
    """Add a record to the metrics time series every this many environment steps."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes after training, on seeds disjoint from training."""
    eval_interval: int = 0
    """Also evaluate every this many env steps during training (0: only at the end); time excluded from training."""
    eval_interval_episodes: int = 10
    """Deterministic episodes of each evaluation during training."""
    select_best_checkpoint: bool = False
    """Deliver the checkpoint of the best evaluation during training instead of the last parameters: the model
    and the final evaluation (SC-006) are of it, and the last parameters' evaluation is recorded beside it."""
    selection_candidates: int = 1
    """With select_best_checkpoint: how many of the best evaluations during training have their checkpoints
    play `selection_episodes` further episodes; the best on those is delivered (1: the best evaluation's)."""
    selection_episodes: int = 0
    """Episodes each candidate checkpoint plays for the choice, on seeds none of the other evaluations play;
    0 with one candidate, > 0 with several."""
    solve_threshold: float = 200.0
    """Mean evaluation return that counts as solving the task (SC-006)."""

    @property
    def rollout_size(self) -> int:
        """Transitions per update."""
        return self.num_envs * self.n_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ConfigError naming the first unusable value."""
        positive_ints = [
            "total_timesteps", "num_envs", "n_steps", "hidden_size",
            "checkpoint_interval", "recording_interval", "eval_episodes", "eval_interval_episodes",
        ]
        for name in positive_ints:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        if self.seed >= 2**32:
            raise ConfigError(f"seed must be below 2**32, got {self.seed}")
        if self.eval_interval < 0:
            raise ConfigError(f"eval_interval must be >= 0 (0 evaluates only at the end), got {self.eval_interval}")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"keep_checkpoints must be >= 0 (0 keeps all), got {self.keep_checkpoints}")
        if self.select_best_checkpoint and (self.eval_interval <= 0 or self.eval_interval % self.checkpoint_interval
                                            or self.keep_checkpoints):
            raise ConfigError(
                "select_best_checkpoint needs a checkpoint at every evaluation: eval_interval > 0 and a multiple of"
                f" checkpoint_interval, keep_checkpoints = 0 (got {self.eval_interval}, {self.checkpoint_interval},"
                f" {self.keep_checkpoints})"
            )
        if self.selection_candidates < 1 or self.selection_episodes < 0:
            raise ConfigError(
                "selection_candidates must be >= 1 and selection_episodes >= 0, got "
                f"{self.selection_candidates} and {self.selection_episodes}"
            )
        if (self.selection_candidates > 1) != (self.selection_episodes > 0) or (
                self.selection_candidates > 1 and not self.select_best_checkpoint):
            raise ConfigError(
                "selection_candidates > 1 needs select_best_checkpoint and selection_episodes > 0, and only it does"
                f" (got {self.select_best_checkpoint}, {self.selection_candidates}, {self.selection_episodes})"
            )
        if not 0.0 < self.learning_rate:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not (math.isfinite(self.reward_scale) and self.reward_scale > 0.0):
            raise ConfigError(f"reward_scale must be a finite number > 0, got {self.reward_scale}")
        if self.normalize_rewards and self.reward_scale != 1.0:
            raise ConfigError(
                f"normalize_rewards and reward_scale {self.reward_scale} both rescale rewards; use one of them"
            )
        for name in ("ent_coef", "vf_coef", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if not self.adam_eps > 0.0:
            raise ConfigError(f"adam_eps must be > 0, got {self.adam_eps}")


@dataclasses.dataclass(frozen=True)
class PPOConfig(RunConfig):
    """PPO: the seed experiment's hyperparameters, with Stable-Baselines3's defaults for the rest."""

    algo: str = "ppo"
    n_steps: int = 256
    learning_rate: float = 3e-4
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    batch_size: int = 64
    """Minibatch size; must divide num_envs * n_steps."""
    n_epochs: int = 10
    """Passes over each rollout."""
    clip_range: float = 0.2
    """PPO ratio clipping."""

    @property
    def num_minibatches(self) -> int:
        return self.rollout_size // self.batch_size

    def validate(self) -> None:
        super().validate()
        for name in ("batch_size", "n_epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.rollout_size % self.batch_size:
            raise ConfigError(
                f"batch_size {self.batch_size} must divide the rollout size "
                f"num_envs * n_steps = {self.rollout_size}"
            )
        if not self.clip_range > 0.0:
            raise ConfigError(f"clip_range must be > 0, got {self.clip_range}")


A2C_OPTIMIZERS = ("rmsprop", "adam")


@dataclasses.dataclass(frozen=True)
class A2CConfig(RunConfig):
    """A2C: the seed experiment's hyperparameters, with Stable-Baselines3's defaults for the rest."""

    algo: str = "a2c"
    n_steps: int = 5
    learning_rate: float = 7e-4
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    optimizer: str = "rmsprop"
    """"rmsprop" (PyTorch-style, Stable-Baselines3's A2C default) or "adam" (SB3's use_rms_prop=False)."""
    rms_decay: float = 0.99
    """RMSprop smoothing constant (PyTorch's alpha)."""
    rms_eps: float = 1e-5
    """RMSprop epsilon, added outside the square root as PyTorch does."""

    def validate(self) -> None:
        super().validate()
        if self.optimizer not in A2C_OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(A2C_OPTIMIZERS)}, got '{self.optimizer}'")
        if not 0.0 <= self.rms_decay < 1.0:
            raise ConfigError(f"rms_decay must lie in [0, 1), got {self.rms_decay}")
        if not self.rms_eps > 0.0:
            raise ConfigError(f"rms_eps must be > 0, got {self.rms_eps}")


CONFIG_CLASSES: dict[str, type[RunConfig]] = {"ppo": PPOConfig, "a2c": A2CConfig}


def _check_type(name: str, value: Any, expected: type, source: str) -> Any:
    """Return value as `expected`, or raise ConfigError. Ints are accepted where floats are expected."""
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"config key '{name}' in {source} must be {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _check_keys_and_types(algo: str, values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` with every key known to `algo`'s config and every value of its type, or a ConfigError naming
    `source`."""
    cls = CONFIG_CLASSES[algo]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    checked = {}
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"unknown config key '{name}' in {source} for algorithm '{algo}'")
        checked[name] = _check_type(name, value, hints[name], source)
    return checked


def make_config(algo: str, values: dict[str, Any] | None = None, source: str = "overrides") -> RunConfig:
    """Build and validate the config of `algo` from defaults updated with `values`."""
    if algo not in CONFIG_CLASSES:
        raise ConfigError(f"unknown algorithm '{algo}' (choose from {', '.join(CONFIG_CLASSES)})")
    checked = _check_keys_and_types(algo, values or {}, source)
    if checked.get("algo", algo) != algo:
        raise ConfigError(f"{source} is a config for '{checked['algo']}', not for '{algo}'")
    config = CONFIG_CLASSES[algo](**checked)
    config.validate()
    return config


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict, turning every failure into one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None


def config_to_toml(config: RunConfig, omit: tuple[str, ...] = ()) -> str:
    """Every field of `config` but those in `omit`, as a flat TOML file that load_config reads back equal."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)  # a TOML basic string: the same escapes as JSON
        return repr(v)  # int, or float with its exponent: 1e-05, 0.0016

    return "".join(f"{k} = {value(v)}\n" for k, v in config.to_dict().items() if k not in omit)


# keys with a command-line option of their own, which --set would silently contradict
_OWN_OPTION = {"algo": "--algo", "seed": "--seed", "total_timesteps": "--steps"}


def parse_settings(algo: str, items: list[str] | None) -> dict[str, Any]:
    """The `--set KEY=VALUE` items as a dict; VALUE is read as a TOML value, or as a string if it is not one.

    Keys and types are checked here, so that an error names --set rather than the config file.
    """
    settings: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        if key in _OWN_OPTION:
            raise ConfigError(f"--set {key}: use {_OWN_OPTION[key]} instead")
        if key in settings:
            raise ConfigError(f"--set gives '{key}' twice")
        try:
            settings[key] = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            settings[key] = text.strip()  # a bare word: optimizer=adam
    return _check_keys_and_types(algo, settings, "--set")


def load_config(
    algo: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None,
    settings: list[str] | None = None,
) -> RunConfig:
    """Defaults of `algo`, updated by the TOML file at `path` (if any), then by the `--set KEY=VALUE` items
    `settings`, then by `overrides`."""
    values: dict[str, Any] = {}
    sources = []
    if path is not None:
        values.update(read_toml(path))
        sources.append(str(path))
        if "algo" in values and values["algo"] != algo:
            raise ConfigError(f"{path} is a config for '{values['algo']}', not for '{algo}'")
    if settings:
        values.update(parse_settings(algo, settings))
        sources.append("--set")
    values.update(overrides or {})
    return make_config(algo, values, " with ".join(sources) or "overrides")
