"""Running normalisation of training observations and rewards, as Stable-Baselines3's VecNormalize does it.

Observations are standardised by the running mean and variance of every training observation seen so far and
clipped to [-CLIP, CLIP]; rewards are divided by the running standard deviation of each sub-env's discounted
return and clipped the same way. The statistics live on the host in float64, are updated by training steps
only, go into every checkpoint (so a resumed run continues them) and, for observations, into the saved model
(so a loaded agent sees its inputs as it saw them in training). Evaluation uses the statistics as they stand.
"""

from typing import Any

import numpy as np

CLIP = 10.0
EPSILON = 1e-8
PRIOR_COUNT = 1e-4  # the statistics start as mean 0, variance 1, worth this many samples


class RunningMeanStd:
    """Mean and variance of a stream of batches (leading axis = samples), merged batch by batch."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = PRIOR_COUNT

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch's moments into the running ones (Chan, Golub and LeVeque's pairwise update)."""
        batch = np.asarray(batch, np.float64)
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        self.var = (self.var * self.count + batch_var * batch_count
                    + delta**2 * self.count * batch_count / total) / total
        self.count = total

    def to_dict(self) -> dict[str, Any]:
        return {"mean": np.ravel(self.mean).tolist(), "var": np.ravel(self.var).tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, saved: dict[str, Any], shape: tuple[int, ...] = ()) -> "RunningMeanStd":
        stats = cls(shape)
        stats.mean = np.asarray(saved["mean"], np.float64).reshape(shape)
        stats.var = np.asarray(saved["var"], np.float64).reshape(shape)
        stats.count = float(saved["count"])
        return stats


def standardize(obs: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(obs - mean) / sqrt(var + EPSILON), clipped to [-CLIP, CLIP], as float32."""
    return np.clip((obs - mean) / np.sqrt(var + EPSILON), -CLIP, CLIP).astype(np.float32)


class Normalizer:
    """The training-side normaliser of one vector env: observations, rewards, or both."""

    def __init__(self, obs_dim: int, num_envs: int, gamma: float, observations: bool, rewards: bool):
        self.obs_stats = RunningMeanStd((obs_dim,)) if observations else None
        self.return_stats = RunningMeanStd() if rewards else None
        self.gamma = gamma
        self.returns = np.zeros(num_envs, np.float64)  # each sub-env's discounted return so far

    def observations(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        """Standardised observations, after merging them into the statistics when `update`."""
        if self.obs_stats is None:
            return obs
        if update:
            self.obs_stats.update(obs)
        return standardize(obs, self.obs_stats.mean, self.obs_stats.var)

    def rewards(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Rewards over the running std of the discounted returns (which these rewards extend), clipped;
        a sub-env's return restarts from 0 after an episode ends."""
        if self.return_stats is None:
            return rewards
        self.returns = self.returns * self.gamma + rewards
        self.return_stats.update(self.returns)
        scaled = np.clip(rewards / np.sqrt(self.return_stats.var + EPSILON), -CLIP, CLIP)
        self.returns[dones] = 0.0
        return scaled

    def observation_spec(self) -> dict[str, Any] | None:
        """What a saved model needs to standardise its inputs: a copy of the observation statistics (None
        without observation normalisation); evaluations use it as it stands, later steps leave it alone."""
        return None if self.obs_stats is None else self.obs_stats.to_dict()

    def state_dict(self) -> dict[str, Any]:
        """The statistics, for a checkpoint (JSON: Python floats round-trip exactly)."""
        return {
            "observations": self.observation_spec(),
            "returns": None if self.return_stats is None else self.return_stats.to_dict(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's statistics; episodes restart on resume, so the running returns do too."""
        if self.obs_stats is not None:
            self.obs_stats = RunningMeanStd.from_dict(saved["observations"], self.obs_stats.mean.shape)
        if self.return_stats is not None:
            self.return_stats = RunningMeanStd.from_dict(saved["returns"])
        self.returns[:] = 0.0

    def start_from(self, observations: dict[str, Any] | None, returns: dict[str, Any] | None) -> None:
        """Begin with another run's statistics where it has them (`train --init-from`)."""
        if self.obs_stats is not None and observations is not None:
            self.obs_stats = RunningMeanStd.from_dict(observations, self.obs_stats.mean.shape)
        if self.return_stats is not None and returns is not None:
            self.return_stats = RunningMeanStd.from_dict(returns)


def observation_function(spec: dict[str, Any] | None):
    """The standardisation a saved model's spec asks for, or None when the model takes raw observations."""
    if spec is None:
        return None
    mean, var = np.asarray(spec["mean"], np.float64), np.asarray(spec["var"], np.float64)
    return lambda obs: standardize(obs, mean, var)
