"""The metrics recorder: finished episodes and a time series of records, saved as TrainingMetrics JSON.

It never touches device arrays: the loop hands it plain Python numbers.
"""

import math
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jaxrl_lander.files import read_json, write_json_atomic

RECENT_EPISODES = 100  # the window of the rolling means, as Stable-Baselines3's ep_rew_mean


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _mean(xs) -> float | None:
    return sum(xs) / len(xs) if xs else None


class MetricsRecorder:
    """Collects finished episodes and a time series of records; saves and loads TrainingMetrics JSON."""

    def __init__(self, experiment_id: str, algorithm: str, environment: str, seed: int, recording_interval: int):
        self.metadata = {
            "experiment_id": experiment_id,
            "algorithm": algorithm,
            "environment": environment,
            "seed": seed,
            "recording_interval": recording_interval,
            "created_at": now_iso(),
        }
        self.records: list[dict[str, Any]] = []
        self.episodes: list[dict[str, Any]] = []
        self._recent_returns: deque[float] = deque(maxlen=RECENT_EPISODES)
        self._recent_lengths: deque[int] = deque(maxlen=RECENT_EPISODES)

    def add_episode(self, timestep: int, episode_return: float, length: int) -> None:
        self.episodes.append({"timestep": timestep, "return": episode_return, "length": length})
        self._recent_returns.append(episode_return)
        self._recent_lengths.append(length)

    @property
    def recent_reward_mean(self) -> float | None:
        """Mean return of the last 100 finished episodes (None before the first one ends)."""
        return _mean(self._recent_returns)

    def reward_at(self, timestep: int) -> float | None:
        """The rolling mean return as it stood at `timestep`."""
        returns = [e["return"] for e in self.episodes if e["timestep"] <= timestep]
        return _mean(returns[-RECENT_EPISODES:])

    def record(self, timestep: int, loss: float | None) -> dict[str, Any]:
        """Append one time-series record; reward and episode_length are means over the last 100 episodes."""
        length = _mean(self._recent_lengths)
        entry = {
            "timestep": timestep,
            "episode": len(self.episodes),
            "reward": self.recent_reward_mean,
            "episode_length": length,
            "loss": loss if loss is None or math.isfinite(loss) else None,
            "timestamp": now_iso(),
        }
        self.records.append(entry)
        return entry

    def statistics(self) -> dict[str, Any]:
        """Aggregates over every finished training episode (None where no episode finished)."""
        returns = [e["return"] for e in self.episodes]
        lengths = [e["length"] for e in self.episodes]
        mean = _mean(returns)
        std = math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns)) if returns else None
        return {
            "reward_mean": mean,
            "reward_std": std,
            "reward_min": min(returns) if returns else None,
            "reward_max": max(returns) if returns else None,
            "episode_length_mean": _mean(lengths),
            "total_episodes": len(returns),
        }

    def truncate(self, timestep: int) -> None:
        """Forget everything after `timestep` (used when resuming from a checkpoint taken then)."""
        self.records = [r for r in self.records if r["timestep"] <= timestep]
        self.episodes = [e for e in self.episodes if e["timestep"] <= timestep]
        self._recent_returns = deque((e["return"] for e in self.episodes), maxlen=RECENT_EPISODES)
        self._recent_lengths = deque((e["length"] for e in self.episodes), maxlen=RECENT_EPISODES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metadata": dict(self.metadata),
            "records": list(self.records),
            "statistics": self.statistics(),
            "episodes": list(self.episodes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetricsRecorder":
        meta = data["metadata"]
        recorder = cls(
            meta["experiment_id"], meta["algorithm"], meta["environment"], meta["seed"], meta["recording_interval"]
        )
        recorder.metadata["created_at"] = meta["created_at"]
        recorder.records = [dict(r) for r in data["records"]]
        for e in data["episodes"]:
            recorder.add_episode(e["timestep"], e["return"], e["length"])
        return recorder

    def save(self, path: str | Path) -> None:
        # Written at every checkpoint and growing with the run: compact, so the C encoder does it.
        write_json_atomic(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> "MetricsRecorder":
        return cls.from_dict(read_json(path))
