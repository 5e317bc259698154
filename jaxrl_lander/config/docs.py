"""The config keys' documentation, read from the field docstrings of config.py: the one source of `--help`'s key
list and of the README's config table."""

import ast
import functools
import inspect
from typing import Any

from jaxrl_lander.config import A2CConfig, PPOConfig, RunConfig, toml_value


@functools.cache
def field_docs() -> dict[str, str]:
    """{field: its docstring on one line}, over both algorithms' configs (read from this file's source)."""
    docs: dict[str, str] = {}
    for cls in (RunConfig, PPOConfig, A2CConfig):
        body = ast.parse(inspect.getsource(cls)).body[0].body
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_table() -> list[tuple[str, Any, Any, str]]:
    """(key, PPO default, A2C default, docstring) for every config key; None where an algorithm lacks the key."""
    ppo, a2c, docs = PPOConfig().to_dict(), A2CConfig().to_dict(), field_docs()
    return [(name, ppo.get(name), a2c.get(name), docs[name]) for name in {**ppo, **a2c}]


def markdown_table() -> str:
    """The README's config table, written from the field docstrings."""
    show = lambda value: "-" if value is None else toml_value(value)  # noqa: E731
    rows = ["| key | PPO default | A2C default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k}` | {show(p)} | {show(a)} | {doc} |" for k, p, a, doc in field_table()]
    return "\n".join(rows) + "\n"


def config_keys_help(options: dict[str, str] | None = None) -> str:
    """The config keys, their defaults and docstrings: the epilog of the commands that train. A key with an option
    of its own (`options`: key -> option) says so: a TOML file sets it, --set does not."""
    options = options or {}
    lines = ["config keys (a --config TOML file sets any of them; --set KEY=VALUE sets one), PPO / A2C default:"]
    for key, ppo, a2c, doc in field_table():
        defaults = " / ".join("-" if v is None else toml_value(v) for v in (ppo, a2c))
        option = f"   (on the command line {options[key]}, not --set)" if key in options else ""
        lines.append(f"  {key} = {defaults}{option}\n      {doc}")
    return "\n".join(lines)
