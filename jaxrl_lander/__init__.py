"""jaxrl_lander: fast, reproducible PPO and A2C for gymnasium's LunarLander-v3, in JAX."""

__version__ = "0.1.0"


def load_policy(path):
    """Load a trained agent from a model or experiment directory.

    Returns a callable mapping observations (N, 8) float32 to deterministic actions (N,) int32.
    """
    from jaxrl_lander.evaluate import load_policy as _load_policy

    return _load_policy(path)


__all__ = ["load_policy", "__version__"]
