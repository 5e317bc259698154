"""The metrics recorder: finished episodes and a time series of records, saved as TrainingMetrics JSON.

It never touches device arrays: the loop hands it plain Python numbers. At each checkpoint it appends what is new
to a journal beside the JSON, so that a save costs the same however long the run; the whole JSON, which grows with
the run, is written once, when a process finishes its run.
"""

import itertools
import math
import os
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jaxrl_lander.storage.files import (ExperimentPaths, append_json_lines, read_json, read_json_lines, replaced_atomically,
                                write_json_atomic)

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
        self._journaled: tuple[int, int] | None = None  # records and episodes in the journal; None: no journal
        self._journal_end: int | None = None  # where a journal loaded by load_journal is cut to continue it

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
        # It holds the whole run: compact, so the C encoder does it.
        write_json_atomic(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | Path, until: int | None = None) -> "MetricsRecorder":
        """The recorder of a metrics JSON, or of a journal (".jsonl"); with `until`, as it stood at the checkpoint
        of that step (what a resume from it continues)."""
        if Path(path).suffix == ".jsonl":
            recorder = cls.load_journal(path, until)
        else:
            recorder = cls.from_dict(read_json(path))
        if until is not None:
            recorder.truncate(until)
        return recorder

    # ---------------------------------------------------------------- the journal
    def _new_lines(self, step: int) -> list[dict[str, Any]]:
        """What the journal lacks: one line tagged `step`, after the metadata line when there is no journal yet."""
        records, episodes = self._journaled or (0, 0)
        head = [] if self._journaled else [{"metadata": self.metadata}]
        return head + [{"step": step, "records": self.records[records:], "episodes": self.episodes[episodes:]}]

    def append_journal(self, path: str | Path, step: int) -> int:
        """Append the records and episodes made since the last append, as one line tagged with the checkpoint's
        `step`, fsynced: the cost of a checkpoint's save does not grow with the run. A recorder that has no
        journal yet starts one, metadata first. Returns the number of bytes written."""
        written = append_json_lines(path, self._new_lines(step), new=self._journaled is None)
        self._journaled = (len(self.records), len(self.episodes))
        return written

    @classmethod
    def load_journal(cls, path: str | Path, step: int | None = None) -> "MetricsRecorder":
        """The recorder as the journal holds it, or as it stood at the checkpoint of `step`: the lines after that
        step are left out, as is a last line torn by a process killed mid-append. Raises ValueError or KeyError
        when the journal is not one, or does not reach `step` (its metrics were saved before its checkpoint)."""
        lines = read_json_lines(path)
        if not lines or "metadata" not in lines[0][0]:
            raise ValueError("no metadata line")
        kept = list(itertools.takewhile(lambda line: step is None or line[0]["step"] <= step, lines[1:]))
        reached = kept[-1][0]["step"] if kept else 0
        if step is not None and reached != step:
            raise ValueError(f"it reaches step {reached}, not the checkpoint's step {step}")
        recorder = cls.from_dict({"metadata": lines[0][0]["metadata"],
                                  "records": [r for line, _ in kept for r in line["records"]],
                                  "episodes": [e for line, _ in kept for e in line["episodes"]]})
        recorder._journaled = (len(recorder.records), len(recorder.episodes))
        recorder._journal_end = (kept or lines)[-1][1]
        return recorder

    def continue_journal(self, path: str | Path, step: int) -> None:
        """On resuming from the checkpoint of `step`, make the journal hold just this recorder, so that appends
        continue from it: cut off the lines of later checkpoints (and a torn line), or, for an experiment written
        before there was a journal (loaded from its JSON, cut back to `step`), write it whole once."""
        if self._journal_end is None or self._journaled != (len(self.records), len(self.episodes)):
            self._journaled = None
            with replaced_atomically(path) as tmp:
                self.append_journal(tmp, step)
        elif os.path.getsize(path) > self._journal_end:
            os.truncate(path, self._journal_end)
        self._journal_end = None


def metrics_file(paths: ExperimentPaths) -> Path:
    """The file holding an experiment's latest metrics: its JSON, or the journal of a run still training or killed
    (no JSON, or one older than the journal, as after a resume). FileNotFoundError when it has neither."""
    journal, final = paths.metrics_journal, paths.metrics
    if journal.is_file() and (not final.is_file() or final.stat().st_mtime_ns < journal.stat().st_mtime_ns):
        return journal
    if not final.is_file():
        raise FileNotFoundError(f"no metrics file in {paths.root}")
    return final


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The TrainingMetrics dict of a metrics JSON, or of a journal (".jsonl") as it stands."""
    return MetricsRecorder.load_journal(path).to_dict() if Path(path).suffix == ".jsonl" else read_json(path)
