"""What a person watching sees: a progress bar on a terminal (rich), or a log line every tenth of the run."""

import logging
import sys
import time
from pathlib import Path
from typing import Any

from jaxrl_lander.outputs import Sink

log = logging.getLogger("jaxrl_lander")


def _speed(start_step: int, start_time: float, step: int) -> float:
    return (step - start_step) / max(time.perf_counter() - start_time, 1e-9)


class ProgressBar(Sink):
    """Steps, steps/s, episodes, recent mean return ("ret") and time left, refreshed at each metrics record."""

    def __init__(self, total: int, start: int, label: str = "training", console=None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        fixed = lambda **kw: Column(no_wrap=True, **kw)  # noqa: E731  (cut, never wrapped onto a second line)
        # On an 80-column terminal the numbers and the time left keep their width; the label and the bar give way.
        self.progress = Progress(
            TextColumn(f"[bold]{label}", table_column=fixed(max_width=16, overflow="ellipsis")),
            BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=4)),
            TextColumn("{task.completed:,}/{task.total:,}", table_column=fixed()),
            TextColumn("{task.fields[rate]}/s", table_column=fixed()),
            TextColumn("{task.fields[episodes]:,} ep", table_column=fixed()),
            TextColumn("ret {task.fields[recent]}", table_column=fixed()),
            TimeRemainingColumn(table_column=fixed(min_width=7)), transient=False, expand=True, console=console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=start, rate="-", episodes=0, recent="-")
        self.start, self.t0 = start, time.perf_counter()

    def record(self, record: dict[str, Any]) -> None:
        recent = record["reward"]
        self.progress.update(self.task, completed=record["timestep"],
                             rate=f"{_speed(self.start, self.t0, record['timestep']):,.0f}",
                             episodes=record["episode"], recent="-" if recent is None else f"{recent:.1f}")

    def close(self, step: int) -> None:
        self.progress.update(self.task, completed=step)  # past the last record
        self.progress.stop()


class LogLines(Sink):
    """INFO lines: progress every tenth of the run (and at least every SILENCE seconds), each evaluation; DEBUG:
    each update's losses."""

    SILENCE = 60.0

    def __init__(self, total: int, start: int, progress_lines: bool = True, label: str = ""):
        self.total, self.start, self.t0, self.label = total, start, time.perf_counter(), label
        self.every = max(total // 10, 1)
        self.next_line = start + self.every if progress_lines else None
        self.last_line = self.t0

    def record(self, record: dict[str, Any]) -> None:
        step, now = record["timestep"], time.perf_counter()
        if self.next_line is None or (step < self.next_line and now - self.last_line < self.SILENCE):
            return
        while self.next_line <= step:
            self.next_line += self.every
        self.last_line = now
        recent = record["reward"]
        log.info("%sstep %d/%d | %.0f steps/s | %d episodes | recent return %s", self.label, step, self.total,
                 _speed(self.start, self.t0, step), record["episode"], "n/a" if recent is None else f"{recent:.1f}")

    def update(self, step: int, metrics: dict[str, float]) -> None:
        log.debug("update at step %d: %s", step, metrics)

    def evaluation(self, step: int, summary: dict[str, Any], final: bool = False) -> None:
        log.info("%s%sevaluation at step %d: %.1f over %d episodes", self.label, "final " if final else "", step,
                 summary["mean"], summary["episodes"])


def run_sinks(total: int, start: int, tensorboard_dir: Path | None, progress_bar: bool | None,
              label: str = "", console: bool = True) -> list[Sink]:
    """A run's sinks besides the metrics: a progress bar (default: when stderr is a terminal) or progress log
    lines (unless not `console`: an agent not shown), and TensorBoard event files in `tensorboard_dir` when given.
    `label` names the agent shown (one of several)."""
    bar = sys.stderr.isatty() if progress_bar is None else progress_bar
    if not bar and log.level == logging.NOTSET:  # train() from a script that left this package's logging alone:
        log.setLevel(logging.INFO)  # its progress lines are shown, as the command line shows them
        if not log.hasHandlers():
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            log.addHandler(handler)
    sinks: list[Sink] = [ProgressBar(total, start, label or "training")] if bar and console else []
    if console:
        sinks.append(LogLines(total, start, progress_lines=not bar, label=f"{label}: " if label else ""))
    if tensorboard_dir is not None:
        from jaxrl_lander.outputs.tensorboard import TensorBoardLog

        sinks.append(TensorBoardLog(tensorboard_dir, start))
    return sinks
