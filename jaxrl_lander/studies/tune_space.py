"""A tuning study's search space, read from a TOML file (configs/tune_*.toml): the settings every trial shares,
and per config key the values to try. Light imports: the command line checks a space before JAX or Optuna load.

    algo = "a2c"                 # optional; must match --algo when given
    [settings]                   # config keys every trial trains with (over --config, under --set)
    total_timesteps = 500_000
    [space]                      # one table per key tried
    learning_rate = { type = "float", low = 1e-4, high = 3e-3, log = true }
    n_steps = { type = "int", low = 4, high = 32, step = 4 }
    gamma = { type = "categorical", choices = [0.99, 0.995, 0.999] }
"""

import dataclasses
import math
from pathlib import Path
from typing import Any

from jaxrl_lander.config import (CONFIG_CLASSES, RunConfig, check_keys_and_types, checked_value, field_types,
                                 make_config, read_toml)
from jaxrl_lander.config.errors import ConfigError
from jaxrl_lander.config.redact import shorten

# What each kind of range takes: (required keys, optional keys)
KINDS = {"float": ({"low", "high"}, {"log"}), "int": ({"low", "high"}, {"step", "log"}),
         "categorical": ({"choices"}, set())}
NOT_TUNED = ("algo", "seed")  # a trial's seed is the study's; the algorithm is the study's
# Optuna draws ints through floats: past 2**53 its draws leave the range or the step's grid, or fail
INT_LIMIT = 2**53


def _value_problem(cls: type[RunConfig], key: str, value: Any) -> str | None:
    """What is wrong with one value of `key` whatever the other keys are: the config's own rule on that field, and
    tuning's need of evaluations during training (the objective and the pruner read them)."""
    if key == "eval_interval" and value <= 0:
        return "tuning needs eval_interval > 0: the objective and the pruner read the evaluations during training"
    return cls.field_problem(key, value)


@dataclasses.dataclass(frozen=True)
class Space:
    """The settings every trial shares and the range of each key tried (a table as in the file, checked)."""

    algo: str
    settings: dict[str, Any]
    ranges: dict[str, dict[str, Any]]
    source: str

    def suggest(self, trial) -> dict[str, Any]:
        """One trial's values: each range asked of an Optuna trial, in the file's order."""
        values = {}
        for key, spec in self.ranges.items():
            if spec["type"] == "float":
                values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))
            elif spec["type"] == "int":
                values[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1),
                                                log=spec.get("log", False))
            else:
                values[key] = trial.suggest_categorical(key, spec["choices"])
        return values


def read_space(path: str | Path, algo: str) -> Space:
    """The space in the TOML file at `path` for `algo`, or one ConfigError line naming the problem."""
    source = str(path)
    values = read_toml(path)
    _check_finite(values, source, "")
    unknown = set(values) - {"algo", "settings", "space"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key '{sorted(unknown)[0]}' (a space file holds algo,"
                          " [settings] and [space])")
    if values.get("algo", algo) != algo:
        raise ConfigError(f"{source} is a search space for '{values['algo']}', not for '{algo}'")
    if algo not in CONFIG_CLASSES:
        raise ConfigError(f"unknown algorithm '{algo}' (choose from {', '.join(CONFIG_CLASSES)})")
    for table in ("settings", "space"):
        if not isinstance(values.get(table, {}), dict):
            raise ConfigError(f"{source}: [{table}] must be a table")
    settings = check_keys_and_types(algo, values.get("settings", {}), f"{source} [settings]")
    for key in NOT_TUNED:
        if key in settings:
            raise ConfigError(f"{source} [settings]: '{key}' is the study's own (--{key} of the command)")
    ranges = values.get("space", {})
    if not ranges:
        raise ConfigError(f"{source}: [space] names no key to tune")
    for key, spec in ranges.items():
        ranges[key] = _checked_range(key, spec, CONFIG_CLASSES[algo], f"{source} [space]")
        if key in settings:
            raise ConfigError(f"{source}: '{key}' is both in [settings] and in [space]")
    return Space(algo=algo, settings=settings, ranges=ranges, source=source)


def _checked_range(key: str, spec: Any, cls: type[RunConfig], where: str) -> dict[str, Any]:
    """One key's range, checked against the config field it tries; ConfigError naming the key otherwise."""
    types = field_types(cls)
    if key not in types:
        raise ConfigError(f"{where}: unknown config key '{key}'")
    if key in NOT_TUNED:
        raise ConfigError(f"{where}: '{key}' cannot be tuned")
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise ConfigError(f"{where}: '{key}' needs a table with type = \"float\", \"int\" or \"categorical\"")
    required, optional = KINDS[spec["type"]]
    extra, missing = set(spec) - required - optional - {"type"}, required - set(spec)
    if extra or missing:
        what = f"unknown field '{sorted(extra)[0]}'" if extra else f"no '{sorted(missing)[0]}'"
        raise ConfigError(f"{where}: '{key}' ({spec['type']}) has {what}")
    field = types[key]
    if spec["type"] == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: '{key}' choices must be a non-empty list")
        choices = [checked_value(key, c, field, where) for c in choices]
        if len(set(choices)) < len(choices):
            raise ConfigError(f"{where}: '{key}' choices repeat a value")
        for choice in choices:  # each alone (an env id is never handed to gymnasium unless it is on the list)
            if problem := _value_problem(cls, key, choice):
                raise ConfigError(f"{where}: '{key}' choice {shorten(choice)} is refused: {problem}")
        return {"type": "categorical", "choices": choices}
    if field is not {"float": float, "int": int}[spec["type"]]:
        raise ConfigError(f"{where}: '{key}' is {field.__name__}: give it type = \"{_kind_of(field)}\"")
    low, high = (checked_value(key, spec[k], field, where) for k in ("low", "high"))
    if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(high - low)):
        raise ConfigError(f"{where}: '{key}' range must be finite, got low {low!r}, high {high!r}")
    if field is int and max(abs(low), abs(high)) > INT_LIMIT:
        raise ConfigError(f"{where}: '{key}' range must lie within +-2**53 (Optuna draws ints through floats), got"
                          f" low {low}, high {high}")
    if not low < high:
        raise ConfigError(f"{where}: '{key}' range is empty (low {low!r} must be below high {high!r})")
    for end, value in (("low", low), ("high", high)):  # every rule on a field alone is an interval: the ends tell
        if problem := _value_problem(cls, key, value):
            raise ConfigError(f"{where}: '{key}' {end} {value!r} is refused: {problem}")
    log = checked_value(key, spec.get("log", False), bool, where)
    if log and low <= 0:
        raise ConfigError(f"{where}: '{key}' log range needs low > 0, got {low!r}")
    checked = {"type": spec["type"], "low": low, "high": high, "log": log}
    if spec["type"] == "int":
        step = checked_value(key, spec.get("step", 1), int, where)
        if step < 1 or (log and step != 1):
            raise ConfigError(f"{where}: '{key}' step must be a positive integer (1 with log), got {step}")
        checked["step"] = step
    return checked


def _check_finite(value: Any, source: str, at: str) -> None:
    """ConfigError naming the first non-finite float anywhere in a space file's `value` (NaN equals nothing: a study
    made with it could never be joined again)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {at} is {value}: a search space holds finite numbers only")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, source, f"{at}.{key}" if at else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, source, f"{at}[{i}]")


def _kind_of(field: type) -> str:
    return {float: "float", int: "int"}.get(field, "categorical")


def trial_config(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """`base` with one trial's values; ConfigError when that combination is not a valid config."""
    return make_config(base.algo, {**base.to_dict(), **values}, source="the trial's values")
