"""Environments: gymnasium's vector env on the host (with the running normalisation of what it returns), and
envpool's C++ port stepped inside a jitted program. Checking a config's env needs neither jax nor envpool's
step, so the command line does it before the heavy imports."""

import importlib.util

from jaxrl_lander.config.errors import ConfigError, install_hint

# envpool's port of it (its -v2 is refused by gymnasium's, which every evaluation plays): the terminal rule of
# envs.envpool.episode_ends is LunarLander's
ENVPOOL_ENVS = ("LunarLander-v3", "LunarLanderContinuous-v3")


def check_envs(config):
    """The shape (config.EnvShape) of config.env_id, or a ConfigError: gymnasium must drive it (every evaluation
    plays gymnasium's env), and envpool too when it plays the training episodes."""
    from jaxrl_lander.envs.gymnasium import check_env

    dims = check_env(config.env_id)
    if config.env_backend == "envpool":
        if config.env_id not in ENVPOOL_ENVS:
            raise ConfigError(f"env_backend 'envpool' runs {', '.join(ENVPOOL_ENVS)} only, not '{config.env_id}'")
        if importlib.util.find_spec("envpool") is None:  # importing it takes seconds (it imports jax)
            raise ConfigError(f"env_backend 'envpool' needs the envpool package: {install_hint('envpool')}")
    return dims
