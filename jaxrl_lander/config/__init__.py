"""Run configuration: every hyperparameter with its default in frozen dataclasses validated at construction,
and TOML files of them. The field docstrings are the one source of `--help` and of the README's config table.

One job: what a run may be asked to do, and whether it can be, before anything loads: the fields, their ranges
and how they fit together, the envs a config may name (and their shapes and options), and reading and writing
them as TOML; how a run does it lives in the layers above."""

import dataclasses
import functools
import json
import math
import numbers
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jaxrl_lander.config.errors import ConfigError
from jaxrl_lander.config.redact import shorten

BACKENDS = ("gymnasium", "envpool")


class EnvShape(NamedTuple):
    """What the policy needs to know of an env: its observation size and its actions."""

    obs_dim: int
    action_size: int  # the number of discrete actions, or the dimension of a continuous action
    continuous: bool = False  # actions are real vectors in [-1, 1]^action_size (a Box), not integers


# The env ids a config, a search space or a saved model may name (gymnasium's LunarLander family), with their
# shapes, so that checking a config builds no env. gymnasium imports the module that an id of the form
# "module:Env" names, so an id read from a file or a command line is never handed to it unless it is on this list.
# allow_env_id adds an env that the caller's own code registered. tests/test_envs.py checks these against the envs.
ENV_IDS: dict[str, EnvShape] = {"LunarLander-v3": EnvShape(8, 4), "LunarLanderContinuous-v3": EnvShape(8, 2, True)}
# The ids whose env takes LunarLander's options (ENV_OPTIONS), gymnasium's keyword arguments of the same names.
LANDER_IDS = ("LunarLander-v3", "LunarLanderContinuous-v3")
ENV_OPTIONS = ("gravity", "enable_wind", "wind_power", "turbulence_power")


def allow_env_id(env_id: str, obs_dim: int, action_size: int, continuous: bool = False) -> None:
    """Let configs name `env_id`, an env registered with gymnasium by the calling program (a test's probe env),
    with flat observations of `obs_dim` and `action_size` discrete actions (or continuous ones in [-1, 1] of that
    dimension)."""
    if ":" in env_id:
        raise ConfigError(f"env_id {shorten(env_id)}: an id with a module part would make gymnasium import it")
    ENV_IDS[env_id] = EnvShape(obs_dim, action_size, continuous)


def check_env_id(env_id: str) -> str:
    """`env_id` if a config may name it (ENV_IDS), else ConfigError."""
    if env_id not in ENV_IDS:
        raise ConfigError(f"env_id must be one of {', '.join(ENV_IDS)}, got {shorten(env_id)}")
    return env_id


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Fields shared by every algorithm. Construct PPOConfig or A2CConfig; an invalid value raises ConfigError."""

    algo: str = ""
    """Which algorithm the config is for; a file for the other one is refused."""
    env_id: str = "LunarLander-v3"
    """Gymnasium environment id: LunarLander-v3 (4 discrete actions) or LunarLanderContinuous-v3 (two engine
    throttles in [-1, 1], learned with a Gaussian policy)."""
    env_backend: str = "gymnasium"
    """Where training episodes are played: "gymnasium" (its Python env, stepped from the host) or "envpool" (its
    C++ port, stepped inside a compiled rollout); every evaluation plays gymnasium's env."""
    gravity: float = -10.0
    """LunarLander's gravity, in (-12, 0) (gymnasium's keyword of that name); not with env_backend "envpool"."""
    enable_wind: bool = False
    """Wind and turbulence push the lander (gymnasium's enable_wind); not with env_backend "envpool"."""
    wind_power: float = 15.0
    """The wind's greatest strength, in [0, 20]; a value other than the default needs enable_wind = true."""
    turbulence_power: float = 1.5
    """The turbulence's greatest strength, in [0, 2]; a value other than the default needs enable_wind = true."""
    seed: int = 42
    """The one seed every PRNG key and env seed derives from."""
    total_timesteps: int = 50_000
    """Env steps to train, summed over sub-envs."""
    num_envs: int = 8
    """Sub-environments of the gymnasium vector env."""
    n_steps: int = 256
    """Steps per sub-env in one rollout; an update learns from num_envs x n_steps transitions."""
    learning_rate: float = 3e-4
    """Optimiser step size."""
    anneal_lr: bool = False
    """Decay the step size linearly to 0 over total_timesteps (rl-zoo3's "lin_" schedules)."""
    gamma: float = 0.99
    """Discount factor."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (values live in the scaled units); recorded returns stay raw."""
    normalize_observations: bool = False
    """Standardise observations by their running mean and variance over training, clipped to [-10, 10]; the
    statistics go into checkpoints and the model."""
    normalize_rewards: bool = False
    """Divide rewards by the running std of the discounted return, clipped to [-10, 10] (VecNormalize's); not
    with reward_scale."""
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
    """Width of each of the two tanh hidden layers of the actor and of the critic."""
    log_std_init: float = 0.0
    """A continuous policy's log-std before training, in [-5, 2] (0: std 1, Stable-Baselines3's default); only
    with a continuous env_id, and not with --init-from (the model's log-std is the start)."""
    checkpoint_interval: int = 1_000
    """Save an orbax checkpoint every this many env steps (and at the last step)."""
    keep_checkpoints: int = 0
    """Keep only the newest N checkpoints; 0 keeps all."""
    recording_interval: int = 100
    """Add a record to the metrics time series every this many env steps."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes after training, on seeds disjoint from training (SC-006)."""
    eval_interval: int = 0
    """Also evaluate every this many env steps during training (0: only at the end); excluded from training time."""
    eval_interval_episodes: int = 10
    """Deterministic episodes of each evaluation during training."""
    select_best_checkpoint: bool = False
    """Deliver the checkpoint of the best evaluation during training instead of the last parameters (the model, the
    final evaluation, SC-006), the last parameters' evaluation recorded beside it; needs eval_interval a multiple
    of checkpoint_interval and keep_checkpoints 0."""
    selection_candidates: int = 1
    """With select_best_checkpoint: the checkpoints of this many of the best evaluations during training are
    candidates; with several, each plays selection_episodes further episodes and the best there is delivered."""
    selection_episodes: int = 0
    """Episodes each candidate plays, on seeds no other evaluation plays; > 0 exactly when selection_candidates > 1."""
    solve_threshold: float = 200.0
    """Mean evaluation return that counts as solving the task (SC-006, time to solve)."""

    def __post_init__(self) -> None:
        for name, expected in field_types(type(self)).items():
            object.__setattr__(self, name, checked_value(name, getattr(self, name), expected))
        if CONFIG_CLASSES.get(self.algo) is not type(self):
            raise ConfigError(f"algo '{self.algo}' does not name {type(self).__name__}'s algorithm")
        self._validate()

    @property
    def rollout_size(self) -> int:
        """Transitions per update."""
        return self.num_envs * self.n_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def env_options(self) -> dict[str, Any]:
        """The env options (ENV_OPTIONS) that differ from their defaults, as gymnasium's keyword arguments: the one
        place an env's options are chosen. Training envs, every evaluation, the saved model (hence `evaluate`) and
        the experiment's name take them from here; {} is LunarLander as gymnasium makes it by default."""
        defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
        return {name: getattr(self, name) for name in ENV_OPTIONS if getattr(self, name) != defaults[name]}

    def differences(self, saved: Mapping[str, Any], ignore=()) -> list[str]:
        """The keys outside `ignore` in which `saved` (a config's to_dict(), where a key added since counts as its
        default) differs from this config, each with both values."""
        defaults, current = {f.name: f.default for f in dataclasses.fields(self)}, self.to_dict()
        then = {key: saved.get(key, defaults.get(key)) for key in set(saved) | set(current) if key not in ignore}
        return [f"{key} ({shorten(then[key], 40)} there, {shorten(current.get(key), 40)} here)"
                for key in sorted(then) if then[key] != current.get(key)]

    _POSITIVE = ("total_timesteps", "num_envs", "n_steps", "hidden_size", "checkpoint_interval",
                 "recording_interval", "eval_episodes", "eval_interval_episodes")
    # Upper bounds far past any useful run, below what overflows a counter or makes XLA abort the process
    # (a hidden_size of 10**9 crashed it) or leaves a run that never ends.
    _AT_MOST = {"total_timesteps": 10**12, "num_envs": 4096, "n_steps": 2**20, "hidden_size": 8192,
                "checkpoint_interval": 10**12, "recording_interval": 10**12, "eval_interval": 10**12,
                "eval_episodes": 10**6, "eval_interval_episodes": 10**6, "keep_checkpoints": 10**6,
                "selection_candidates": 1000, "selection_episodes": 10**6, "batch_size": 2**22, "n_epochs": 10**4}
    MAX_ROLLOUT = 2**22  # transitions of one update
    # Each field's own range, whatever the other fields are: (holds, what the message says it must do).
    _RANGES = {
        "eval_interval": (lambda v: v >= 0, "be >= 0 (0 evaluates only at the end)"),
        "keep_checkpoints": (lambda v: v >= 0, "be >= 0 (0 keeps all)"),
        "learning_rate": (lambda v: 0.0 < v <= 1.0, "lie in (0, 1]"),
        "gamma": (lambda v: 0.0 <= v <= 1.0, "lie in [0, 1]"),
        "gae_lambda": (lambda v: 0.0 <= v <= 1.0, "lie in [0, 1]"),
        "reward_scale": (lambda v: v > 0.0, "be > 0"),
        "ent_coef": (lambda v: v >= 0.0, "be >= 0"),
        "vf_coef": (lambda v: v >= 0.0, "be >= 0"),
        "max_grad_norm": (lambda v: v > 0.0, "be > 0 (gradients clipped to 0 learn nothing)"),
        "adam_eps": (lambda v: v > 0.0, "be > 0"),
        "env_backend": (lambda v: v in BACKENDS, f"be one of {', '.join(BACKENDS)}"),
        # gymnasium's LunarLander asserts the first and warns outside the others
        "gravity": (lambda v: -12.0 < v < 0.0, "lie in (-12, 0), bounds excluded (gymnasium's LunarLander range)"),
        "wind_power": (lambda v: 0.0 <= v <= 20.0, "lie in [0, 20] (gymnasium's LunarLander range)"),
        "turbulence_power": (lambda v: 0.0 <= v <= 2.0, "lie in [0, 2] (gymnasium's LunarLander range)"),
        "log_std_init": (lambda v: -5.0 <= v <= 2.0, "lie in [-5, 2]"),
    }

    @classmethod
    def field_problem(cls, name: str, value: Any) -> str | None:
        """What is wrong with `value` for field `name` whatever the other fields are (a config file, a tuning
        space's choice or range end), or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        if name == "env_id":
            try:
                check_env_id(value)
            except ConfigError as exc:
                return str(exc)
        if name in cls._POSITIVE and value <= 0:
            return f"{name} must be a positive integer, got {value}"
        if name in cls._AT_MOST and value > cls._AT_MOST[name]:
            return f"{name} must be at most {cls._AT_MOST[name]:,}, got {value:,}"
        if name in cls._RANGES and not cls._RANGES[name][0](value):
            return f"{name} must {cls._RANGES[name][1]}, got {shorten(value) if isinstance(value, str) else value}"
        if name == "seed" and not 0 <= value < 2**32:  # numpy's seed range
            return f"seed must be {'below 2**32' if value > 0 else 'a non-negative integer'}, got {value}"
        return None

    def _validate(self) -> None:
        """Raise ConfigError naming the first unusable value: each field's own range, then how fields fit together."""
        for name in field_types(type(self)):
            _require((problem := self.field_problem(name, getattr(self, name))) is None, problem)
        _require(self.rollout_size <= self.MAX_ROLLOUT, f"num_envs x n_steps must be at most {self.MAX_ROLLOUT:,}"
                                                         f" transitions, got {self.rollout_size:,}")
        _require(not self.select_best_checkpoint or (
            self.eval_interval > 0 and self.eval_interval % self.checkpoint_interval == 0 and not self.keep_checkpoints),
            "select_best_checkpoint needs a checkpoint at every evaluation: eval_interval > 0 and a multiple of"
            f" checkpoint_interval, keep_checkpoints = 0 (got {self.eval_interval}, {self.checkpoint_interval},"
            f" {self.keep_checkpoints})")
        _require(self.selection_candidates >= 1 and self.selection_episodes >= 0,
                 "selection_candidates must be >= 1 and selection_episodes >= 0, got "
                 f"{self.selection_candidates} and {self.selection_episodes}")
        several = self.selection_candidates > 1
        _require(several == (self.selection_episodes > 0) and (self.select_best_checkpoint or not several),
                 "selection_candidates > 1 needs select_best_checkpoint and selection_episodes > 0, and only it does"
                 f" (got {self.select_best_checkpoint}, {self.selection_candidates}, {self.selection_episodes})")
        _require(self.total_timesteps >= self.rollout_size,
                 f"total_timesteps {self.total_timesteps} is less than one rollout (num_envs x n_steps ="
                 f" {self.rollout_size}): no update would run")
        _require(self.env_backend == "gymnasium" or not (self.normalize_observations or self.normalize_rewards),
                 "normalize_observations and normalize_rewards need env_backend 'gymnasium' (its normaliser runs"
                 " on the host)")
        # Wind strengths without wind change nothing: refused, so that two configs never describe the same env.
        idle = [name for name in ("wind_power", "turbulence_power") if name in self.env_options()]
        _require(self.enable_wind or not idle, f"{' and '.join(idle)} {'needs' if len(idle) == 1 else 'need'}"
                                               " enable_wind = true (without wind, wind strengths change nothing;"
                                               " leave them at their defaults)")
        _require(not self.env_options() or self.env_id in LANDER_IDS,
                 f"{', '.join(self.env_options())}: only {' and '.join(LANDER_IDS)} take env options, not"
                 f" {shorten(self.env_id)}")
        _require(self.env_backend == "gymnasium" or not self.env_options(),
                 f"env_backend 'envpool' has no {', '.join(self.env_options())} (its LunarLander takes no gravity"
                 " or wind options): leave them at their defaults, or train on 'gymnasium'")
        _require(self.log_std_init == 0.0 or ENV_IDS[self.env_id].continuous,
                 f"log_std_init {self.log_std_init} needs a continuous env_id ({shorten(self.env_id)} has discrete"
                 " actions, no log-std)")
        _require(not (self.normalize_rewards and self.reward_scale != 1.0),
                 f"normalize_rewards and reward_scale {self.reward_scale} both rescale rewards; use one of them")


@dataclasses.dataclass(frozen=True)
class PPOConfig(RunConfig):
    """PPO: the seed experiment's hyperparameters, with Stable-Baselines3's defaults for the rest."""

    algo: str = "ppo"
    ent_coef: float = 0.01
    batch_size: int = 64
    """PPO minibatch size; must divide num_envs x n_steps."""
    n_epochs: int = 10
    """PPO passes over each rollout."""
    clip_range: float = 0.2
    """PPO ratio clipping."""

    _POSITIVE = (*RunConfig._POSITIVE, "batch_size", "n_epochs")

    @property
    def num_minibatches(self) -> int:
        return self.rollout_size // self.batch_size

    _RANGES = {**RunConfig._RANGES, "clip_range": (lambda v: 0.0 < v <= 1.0, "lie in (0, 1]")}

    def _validate(self) -> None:
        super()._validate()
        _require(self.rollout_size % self.batch_size == 0,
                 f"batch_size {self.batch_size} must divide the rollout size num_envs * n_steps = {self.rollout_size}")


A2C_OPTIMIZERS = ("rmsprop", "adam")


@dataclasses.dataclass(frozen=True)
class A2CConfig(RunConfig):
    """A2C: the seed experiment's hyperparameters, with Stable-Baselines3's defaults for the rest."""

    algo: str = "a2c"
    n_steps: int = 5
    learning_rate: float = 7e-4
    gae_lambda: float = 1.0
    optimizer: str = "rmsprop"
    """A2C's optimiser: "rmsprop" (PyTorch-style, SB3's default) or "adam" (SB3's use_rms_prop=False)."""
    rms_decay: float = 0.99
    """RMSprop smoothing constant (PyTorch's alpha)."""
    rms_eps: float = 1e-5
    """RMSprop epsilon, added outside the square root as PyTorch does."""

    _RANGES = {**RunConfig._RANGES, "rms_decay": (lambda v: 0.0 <= v < 1.0, "lie in [0, 1)"),
               "optimizer": (lambda v: v in A2C_OPTIMIZERS, f"be one of {', '.join(A2C_OPTIMIZERS)}"),
               "rms_eps": (lambda v: v > 0.0, "be > 0")}


CONFIG_CLASSES: dict[str, type[RunConfig]] = {"ppo": PPOConfig, "a2c": A2CConfig}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@functools.cache
def field_types(cls: type[RunConfig]) -> dict[str, type]:
    """{key: its type} of a config class."""
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def checked_value(name: str, value: Any, expected: type, source: str | None = None) -> Any:
    """`value` as `expected` (ints taken as floats, numpy scalars as Python's), or a ConfigError naming `source`."""
    flag = isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b"  # numpy's bool
    ok = {bool: flag, int: isinstance(value, numbers.Integral) and not flag,
          float: isinstance(value, numbers.Real) and not flag}.get(expected, isinstance(value, expected))
    if not ok:
        where = f" in {source}" if source else ""
        raise ConfigError(f"config key '{name}'{where} must be {expected.__name__}, got {type(value).__name__} {shorten(value)}")
    return expected(value) if expected in (bool, int, float) else value


def check_keys_and_types(algo: str, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`values` with every key known to `algo`'s config and of its type, or a ConfigError naming `source`."""
    if algo not in CONFIG_CLASSES:
        raise ConfigError(f"unknown algorithm '{algo}' (choose from {', '.join(CONFIG_CLASSES)})")
    types = field_types(CONFIG_CLASSES[algo])
    if values.get("algo", algo) != algo:
        raise ConfigError(f"{source} is a config for '{values['algo']}', not for '{algo}'")
    checked = {}
    for name, value in values.items():
        if name not in types:
            raise ConfigError(f"unknown config key '{name}' in {source} for algorithm '{algo}'")
        checked[name] = checked_value(name, value, types[name], source)
    return checked


def make_config(algo: str, values: Mapping[str, Any] | None = None, source: str = "overrides") -> RunConfig:
    """The config of `algo`: its defaults updated with `values`; errors name `source`."""
    checked = check_keys_and_types(algo, values or {}, source)
    return CONFIG_CLASSES[algo](**checked)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict, every failure turned into one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} is a directory, not a file" if path.is_dir() else
                          f"config file {path} is not a regular file" if path.exists() else
                          f"config file not found: {path}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None


def load_config(path: str | Path | None = None, algo: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The config in the TOML file at `path` (a subset of keys; the rest keep their defaults), updated by
    `overrides`. `algo` defaults to the file's `algo` key; when both are given they must agree."""
    values = read_toml(path) if path is not None else {}
    algo = algo or values.get("algo")
    if algo is None:
        raise ConfigError(f"{path or 'load_config'} names no algorithm: give algo, or set algo in the file")
    if path is not None:
        values = check_keys_and_types(algo, values, str(path))
    return make_config(algo, {**values, **(overrides or {})})


def toml_value(value: Any) -> str:
    """One value as TOML writes it: true/false, a basic string (JSON's escapes), an int, a float with its exponent."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)  # 50000, 1e-05, 0.0016


def config_to_toml(config: RunConfig, omit: tuple[str, ...] = ()) -> str:
    """Every field of `config` but those in `omit`, as a flat TOML file that load_config reads back equal."""
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in config.to_dict().items() if k not in omit)


# Config keys that may differ between a checkpoint and the run resuming from it.
RESUMABLE_CHANGES = {
    "total_timesteps", "eval_episodes", "eval_interval", "eval_interval_episodes", "keep_checkpoints",
    "selection_candidates", "selection_episodes",  # how a completed run chooses among its kept checkpoints
}


def check_resumable(config: RunConfig, saved: dict[str, Any], root: Path, step: int | None = None,
                    source: str = "the checkpoint") -> None:
    """Refuse (ConfigError) to resume the experiment at `root` from `source` (its checkpoint at `step`, or its
    finished run), saved with config `saved`, when the config differs beyond RESUMABLE_CHANGES or the steps asked
    for end before the checkpoint."""
    if step is not None and step > config.total_timesteps:
        raise ConfigError(f"cannot resume {root}: its checkpoint is at step {step}, past"
                          f" total_timesteps {config.total_timesteps}; give more steps")
    differing = config.differences(saved, ignore=RESUMABLE_CHANGES)
    if differing:
        raise ConfigError(f"cannot resume {root}: config differs from {source} in {', '.join(differing)}")
