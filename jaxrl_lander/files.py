"""Where an experiment's files live, and how every file is written so that a crash leaves it whole or absent."""

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxrl_lander.errors import ConfigError

# orbax writes a checkpoint or model into "<name>.orbax-checkpoint-tmp-<n>" and renames it when complete.
ORBAX_TMP_MARK = ".orbax-checkpoint-tmp"


@dataclasses.dataclass(frozen=True)
class ExperimentPaths:
    """RESULTS_DIR/experiments/{algo}_seed{seed}/ and the files in it: the one place their names are made."""

    root: Path
    name: str

    @classmethod
    def of(cls, results_dir: str | Path, algo: str, seed: int) -> "ExperimentPaths":
        name = f"{algo}_seed{seed}"
        return cls(root=Path(results_dir) / "experiments" / name, name=name)

    @classmethod
    def at(cls, directory: str | Path) -> "ExperimentPaths":
        """The paths of the experiment in `directory`: named after it, or in a renamed copy, after the one
        experiment whose model or metrics it holds."""
        directory = Path(directory)
        held = {p.name.removesuffix("_model").removesuffix("_metrics.json")
                for pattern in ("*_model", "*_metrics.json") for p in directory.glob(pattern)}
        name = held.pop() if len(held) == 1 and directory.name not in held else directory.name
        return cls(root=directory, name=name)

    @property
    def model(self) -> Path:
        return self.root / f"{self.name}_model"

    @property
    def metrics(self) -> Path:
        return self.root / f"{self.name}_metrics.json"

    @property
    def results(self) -> Path:
        return self.root / f"{self.name}_results.json"

    @property
    def learning_curve(self) -> Path:
        return self.root / f"{self.name}_learning_curve.png"

    @property
    def episode_gif(self) -> Path:
        return self.root / f"{self.name}_episode.gif"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"


def check_writable(results_dir: str | Path) -> None:
    """Raise ConfigError unless `results_dir` is, or can be created as, a writable directory."""
    probe = Path(results_dir)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"results directory {results_dir} is not writable")


def is_partial_write(path: Path) -> bool:
    """Whether `path` is the temporary file of an atomic write that never finished (its process died).

    Every atomic write goes through a hidden temporary file beside its target, named ".<target name>...tmp...".
    """
    return path.name.startswith(".") and ".tmp" in path.name and path.is_file()


def remove_partial_writes(paths: ExperimentPaths) -> list[str]:
    """Delete what a killed process can leave half-written in an experiment: the temporary files of atomic
    writes and uncommitted orbax directories. Returns the removed paths, relative to the experiment."""
    removed = []
    for directory in (paths.root, paths.checkpoints):
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            if is_partial_write(path):
                path.unlink()
            elif ORBAX_TMP_MARK in path.name and path.is_dir():
                shutil.rmtree(path)
            else:
                continue
            removed.append(str(path.relative_to(paths.root)))
    return removed


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


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)
