"""A sweep's variants: the --set overrides of a command, lists of values that make one variant per value, and
which configs can train together as vectorised agents of one program."""

import itertools
import tomllib
from typing import Any

from jaxrl_lander.config import RunConfig, check_keys_and_types, toml_value
from jaxrl_lander.config.errors import ConfigError

# keys with a command-line option of their own, which --set would silently contradict
OWN_OPTION = {"algo": "--algo", "seed": "--seed", "total_timesteps": "--steps", "env_backend": "--backend"}

# What may differ between the agents of one program besides the seed: values the update traces (the learning
# rate is a leaf of the optimiser state), never a shape or a branch.
VARYING = {"ppo": ("learning_rate", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef", "reward_scale"),
           "a2c": ("learning_rate", "gamma", "gae_lambda", "ent_coef", "vf_coef", "reward_scale")}


def check_agents(configs: list[RunConfig]) -> None:
    """Refuse (ConfigError) configs that cannot train as one program: several on another backend than envpool,
    or keys that differ beyond the seed and VARYING."""
    first = configs[0]
    if len(configs) > 1 and first.env_backend != "envpool":
        raise ConfigError("vectorised agents run on the envpool backend only (--backend envpool)")
    varying = {"seed", *VARYING[first.algo]}
    for config in configs[1:]:
        differing = config.differences(first.to_dict(), ignore=varying)
        if differing:
            raise ConfigError(f"vectorised agents may differ in the seed and {', '.join(VARYING[first.algo])}"
                              f" only, not in {', '.join(differing)}")


def _read_settings(items: list[str]) -> dict[str, Any]:
    """The `--set KEY=VALUE` items as a dict; VALUE is read as a TOML value, or as a string if it is not one."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        if key in OWN_OPTION:
            raise ConfigError(f"--set {key}: use {OWN_OPTION[key]} instead")
        if key in settings:
            raise ConfigError(f"--set gives '{key}' twice")
        try:
            settings[key] = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            settings[key] = text.strip()  # a bare word: optimizer=adam
    return settings


def parse_settings(algo: str, items: list[str]) -> dict[str, Any]:
    """The `--set KEY=VALUE` items as a dict of checked config values."""
    return check_keys_and_types(algo, _read_settings(items), "--set")


def sweep_variants(algo: str, items: list[str]) -> dict[str, dict[str, Any]]:
    """A sweep's `--set` items as variants: each KEY=[A,B,...] list gives one variant per value (every
    combination, with several lists), named "KEY=A" (joined by commas). One variant named "" without lists."""
    settings = _read_settings(items)
    lists = {k: v for k, v in settings.items() if isinstance(v, list)}
    for key, values in lists.items():
        if not values or len({toml_value(v) for v in values}) < len(values):
            raise ConfigError(f"--set {key}=[...] needs distinct values, got {toml_value(values)}")
    variants = {}
    for combination in itertools.product(*lists.values()):
        chosen = dict(zip(lists, combination))
        name = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())
        if name in variants:
            raise ConfigError(f"--set lists give two variants the same name '{name}': give values that differ"
                              " in their first 6 significant digits")
        variants[name] = check_keys_and_types(algo, {**settings, **chosen}, "--set")
    return variants
