"""jaxrl_lander: fast, reproducible PPO and A2C for gymnasium's LunarLander-v3, in JAX.

    from jaxrl_lander import PPOConfig, train, load_policy

    results = train(PPOConfig(seed=0))            # what `python -m jaxrl_lander train --algo ppo --seed 0` does
    policy = load_policy(results.experiment_dir)  # policy(obs) -> actions
"""

import importlib

from jaxrl_lander.config import A2CConfig, ConfigError, PPOConfig, RunConfig, load_config

__version__ = "0.1.0"

# Imported on first use, so that `python -m jaxrl_lander` can refuse bad input before JAX loads.
_LAZY = {
    "train": "jaxrl_lander.training.run",
    "train_agents": "jaxrl_lander.training.run",
    "Results": "jaxrl_lander.storage.results",
    "load_policy": "jaxrl_lander.training.evaluate",
    "Policy": "jaxrl_lander.training.evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxrl_lander' has no attribute '{name}'")


__all__ = ["A2CConfig", "ConfigError", "PPOConfig", "Policy", "Results", "RunConfig", "load_config", "load_policy",
           "train", "train_agents", "__version__"]
