"""The cost of one checkpoint's metrics save, early and late in a run: the whole TrainingMetrics JSON rewritten
(how every checkpoint saved them before the journal) against one checkpoint's worth appended to the journal.

    python bench/metrics_save.py [--steps 10000 10000000] [--repeats 20] [--dir .]

The recorder is synthesized as a run of that length leaves it: a record every 100 env steps, an episode every
~200. Each save writes to a temporary directory under --dir (default: here, the disk results go to), fsync
included. Prints a table of the median milliseconds per save, then one JSON line with the same numbers.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxrl_lander.storage.files import write_json_atomic
from jaxrl_lander.storage.metrics import MetricsRecorder

CHECKPOINT_INTERVAL, RECORDING_INTERVAL, EPISODE_EVERY = 1_000, 100, 200


def advance(rec: MetricsRecorder, start: int, end: int, rng: np.random.Generator) -> None:
    """What the loop hands the recorder between steps `start` and `end`."""
    lengths = rng.integers(EPISODE_EVERY // 2, EPISODE_EVERY * 3 // 2, size=(end - start) // 50 + 2)
    next_episode, i = start + int(lengths[0]), 1
    for t in range(start + RECORDING_INTERVAL - start % RECORDING_INTERVAL, end + 1, RECORDING_INTERVAL):
        while next_episode <= t:
            rec.add_episode(next_episode, float(rng.normal(0.0, 100.0)), int(lengths[i]))
            next_episode, i = next_episode + int(lengths[i]), i + 1
        rec.record(t, float(rng.random()))


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000.0


def measure(run_lengths: list[int], repeats: int, directory: Path) -> list[dict]:
    """Median ms per save for each run length; the journal appends of the run lengths take turns, so that the
    disk's moods (fsync dominates an append) fall on all of them alike."""
    recorders, rows = [], []
    for steps in run_lengths:
        rec = MetricsRecorder("ppo_seed0", "ppo", "LunarLander-v3", 0, RECORDING_INTERVAL)
        advance(rec, 0, steps, np.random.default_rng(0))
        recorders.append(rec)
        rows.append({"steps": steps, "records": len(rec.records), "episodes": len(rec.episodes)})
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        journals = [Path(tmp) / f"{steps}.jsonl" for steps in run_lengths]
        journaled = [MetricsRecorder.from_dict(rec.to_dict()) for rec in recorders]  # `recorders` stay as they are
        for rec, journal, steps in zip(journaled, journals, run_lengths):
            rec.append_journal(journal, steps)  # the history, in the journal when the next checkpoint comes
        os.sync()  # its writeback done, not charged to the appends
        rng, new, appended = np.random.default_rng(1), [[] for _ in rows], [[] for _ in rows]
        for i in range(repeats):
            for k, (rec, journal, steps) in enumerate(zip(journaled, journals, run_lengths)):
                step = steps + i * CHECKPOINT_INTERVAL
                advance(rec, step, step + CHECKPOINT_INTERVAL, rng)
                start = time.perf_counter()
                appended[k].append(rec.append_journal(journal, step + CHECKPOINT_INTERVAL))
                new[k].append(time.perf_counter() - start)
        for k, rec in enumerate(recorders):
            path, old = Path(tmp) / f"{rows[k]['steps']}.json", []
            for _ in range(repeats):
                start = time.perf_counter()
                write_json_atomic(path, rec.to_dict(), indent=None)  # the save at every checkpoint before
                old.append(time.perf_counter() - start)
            rows[k].update(json_bytes=path.stat().st_size, json_save_ms=median_ms(old),
                           journal_append_ms=median_ms(new[k]), journal_append_bytes=statistics.median(appended[k]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=Path("."))
    args = parser.parse_args()
    rows = measure(args.steps, args.repeats, args.dir)
    print(f"{'run length':>12} {'records':>8} {'episodes':>8} {'JSON size':>10} {'JSON save':>10} "
          f"{'journal append':>15} {'appended':>9}")
    for r in rows:
        print(f"{r['steps']:>12,} {r['records']:>8,} {r['episodes']:>8,} {r['json_bytes'] / 1e6:>8.2f}MB "
              f"{r['json_save_ms']:>8.2f}ms {r['journal_append_ms']:>13.2f}ms {r['journal_append_bytes']:>8,.0f}B")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
