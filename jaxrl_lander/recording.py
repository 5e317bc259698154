"""Host-side metrics recorder (TrainingMetrics JSON) and atomic JSON files.

The recorder never touches device arrays: the training loop hands it plain Python numbers.
"""

import contextlib
import json
import math
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RECENT_EPISODES = 100  # the window of the rolling means, as Stable-Baselines3's ep_rew_mean


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# Every atomic write goes through a hidden temporary file beside its target, named ".<target name>...tmp...".
def is_partial_write(path: Path) -> bool:
    """Whether `path` is the temporary file of an atomic write that never finished (its process died)."""
    return path.name.startswith(".") and ".tmp" in path.name and path.is_file()


@contextlib.contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; rename it over `path` on success, delete it on failure.

    The temporary keeps the target's suffix, for writers that choose the format by it (matplotlib, Pillow).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Write JSON to a temporary file beside `path`, fsync it, then rename it over `path`.

    A reader (or a crash) sees either the old complete file or the new complete file, never a mix.
    indent=None gives compact output, which the C encoder writes several times faster.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        text = json.dumps(data, indent=indent, allow_nan=False)  # dumps, unlike dump, uses the C encoder
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        with open(path) as f:
            return cls.from_dict(json.load(f))
