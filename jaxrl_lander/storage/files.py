"""Where an experiment's files live, and how every file is written so that a crash leaves it whole or absent."""

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxrl_lander.config import RunConfig
from jaxrl_lander.config.errors import ConfigError, UnreadableModel
from jaxrl_lander.config.redact import shorten

# orbax writes a checkpoint or model into "<name>.orbax-checkpoint-tmp-<n>" and renames it when complete.
ORBAX_TMP_MARK = ".orbax-checkpoint-tmp"


def env_name(config: RunConfig) -> str:
    """The env's part of an experiment's name (experiment_stem): "" for LunarLander-v3 with the default options,
    else "_" and then, each where it differs from the default, "continuous" (LunarLanderContinuous-v3) or
    "env=<id, / as +>" (another id), "gravity<g>", "wind<power>-turb<power>" (enable_wind), each number as
    Python's repr writes it (exact: distinct values, distinct names). A name that would be longer than MAX_NAME
    or not plain takes "env-<16 hex digits of a SHA-256 of the id and options>" instead."""
    options = config.env_options()
    number = lambda x: repr(float(x) + 0.0)  # noqa: E731  (+ 0.0: -0.0 and 0.0 are one env, one name)
    parts = [] if config.env_id == "LunarLander-v3" else [
        "continuous" if config.env_id == "LunarLanderContinuous-v3" else f"env={config.env_id.replace('/', '+')}"]
    if "gravity" in options:
        parts.append(f"gravity{number(config.gravity)}")
    if config.enable_wind:
        parts.append(f"wind{number(config.wind_power)}-turb{number(config.turbulence_power)}")
    part = "".join(f"_{p}" for p in parts)
    longest = f"{config.algo}{part}_seed{2**32 - 1}"  # so that every seed of a config shares the env's part
    if len(longest) > MAX_NAME or not NAME_PATTERN.fullmatch(longest):
        text = json.dumps([config.env_id, {k: float(v) + 0.0 for k, v in options.items()}], sort_keys=True)
        part = f"_env-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return part


def experiment_stem(config: RunConfig) -> str:
    """An experiment's name without its seed: the algorithm and the env (env_name); the name adds "_seed<seed>"."""
    return f"{config.algo}{env_name(config)}"


@dataclasses.dataclass(frozen=True)
class ExperimentPaths:
    """RESULTS_DIR/experiments/{algo}{env}_seed{seed}/ and the files in it: the one place their names are made.
    {env} (env_name) is empty for LunarLander-v3 with the default options: ppo_seed42, ppo_continuous_seed42,
    ppo_wind15.0-turb1.5_seed42, ppo_continuous_gravity-9.5_seed42."""

    root: Path
    name: str

    @classmethod
    def of(cls, results_dir: str | Path, config: RunConfig) -> "ExperimentPaths":
        """The experiment `config` trains into under `results_dir`; two configs of another algorithm, seed, env id
        or env option never share one."""
        name = f"{experiment_stem(config)}_seed{config.seed}"
        return cls(root=Path(results_dir) / "experiments" / name, name=name)

    @classmethod
    def at(cls, directory: str | Path) -> "ExperimentPaths":
        """The paths of the experiment in `directory`: named after it, or in a renamed copy, after the one
        experiment whose model or metrics it holds."""
        directory = Path(directory)
        held = {p.name.removesuffix(suffix) for suffix in ("_model", "_metrics.json", "_metrics.jsonl")
                for p in directory.glob(f"*{suffix}")}  # the journal: a run still training, or killed
        name = held.pop() if len(held) == 1 and directory.name not in held else directory.name
        return cls(root=directory, name=name)

    @property
    def model(self) -> Path:
        return self.root / f"{self.name}_model"

    @property
    def metrics(self) -> Path:
        return self.root / f"{self.name}_metrics.json"

    @property
    def metrics_journal(self) -> Path:
        """What each checkpoint adds to the metrics, one line of JSON each; the JSON is written when a run ends."""
        return self.root / f"{self.name}_metrics.jsonl"

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


def model_path(path: str | Path) -> Path:
    """A model directory, or the model of an experiment directory (ExperimentPaths.at: a renamed copy too)."""
    path = Path(path)
    if "\\" in str(path.absolute()):
        raise UnreadableModel(f"{path} holds '\\', which tensorstore reads as a separator: move the"
                              " experiment to a path without it")
    if path.name.endswith("_model"):
        return path
    model = ExperimentPaths.at(path).model
    if model.is_dir():
        return model
    models = sorted(p for p in path.glob("*_model") if p.is_dir())
    if len(models) == 1:
        return models[0]
    if models:
        raise UnreadableModel(f"{path} holds {len(models)} models ({', '.join(m.name for m in models)}): give the one"
                              f" to use, e.g. {models[0]}, or rename one to {model.name}")
    # `make eval ALGO=ppo SEED=1` names the default env's experiment: point at the same run on another env
    others = same_run_on_other_envs(path) if not path.exists() else []
    hint = f"; on other envs: {', '.join(others)}" if others else ""
    raise UnreadableModel(f"no trained model in {path} (expected {model.name}){hint}")


def same_run_on_other_envs(root: Path) -> list[str]:
    """The experiment directories beside `root` (named {algo}{env}_seed{seed}, ExperimentPaths.of) of the same
    algorithm and seed on another env or other env options, by name."""
    algo, _, rest = root.name.partition("_")
    seed = root.name.rpartition("_seed")[2]
    if not algo or not rest or not seed.isdigit():
        return []
    names = {f"{algo}_seed{seed}", *(p.name for p in root.parent.glob(f"{glob.escape(algo)}_*_seed{seed}"))}
    return sorted(n for n in names - {root.name} if (root.parent / n).is_dir())


# Orbax reads the directory it writes a checkpoint into as a glob pattern when it merges the checkpoint's parts,
# and tensorstore reads a backslash as a separator: under a path holding one of these, checkpoints and models are
# written where nothing reads them back.
UNSAFE_CHARACTERS = "[]*?\\"
MAX_PATH_PART = 200  # bytes of one directory name in a results path; the experiments' names add theirs (255 in all)
MAX_PATH = 3500  # bytes of a results path: the deepest file under it adds about 200 (4,096 in all)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+-]*")
MAX_NAME = 100  # a name the tool makes a directory of; the files in it add their own suffixes


def plain_name(name: str, option: str) -> str:
    """`name` if it can name a directory the tool writes (a sweep, a study): letters, digits and _ . , = + -, not
    starting with a dot, at most MAX_NAME characters; else ConfigError naming `option`."""
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME:
        raise ConfigError(f"{option} must be a plain directory name of at most {MAX_NAME} characters (letters, digits"
                          f" and _ . , = + -, not starting with '.'), got {shorten(name)}")
    return name


def check_results_dir(results_dir: str | Path) -> None:
    """Raise ConfigError unless the tool may write under `results_dir`: a path without the characters orbax and
    tensorstore misread (UNSAFE_CHARACTERS) or over-long names, that is, or can be created as, a writable directory, as are its experiments/ and
    sweeps/ where they exist (root passes the mode bits, but not a file in the way or a read-only mount)."""
    if not str(results_dir):
        raise ConfigError("results directory must not be empty")
    absolute = str(Path(results_dir).absolute())
    unsafe = next((c for c in absolute if c in UNSAFE_CHARACTERS), None)
    if unsafe is not None:
        raise ConfigError(f"results directory {shorten(absolute)} holds '{unsafe}': orbax and tensorstore, which write"
                          f" the checkpoints, read {' '.join(UNSAFE_CHARACTERS)} in a path as a pattern or a"
                          " separator; choose a path without them")
    if any(len(part.encode()) > MAX_PATH_PART for part in Path(absolute).parts):
        raise ConfigError(f"results directory {shorten(absolute)} has a name longer than {MAX_PATH_PART} bytes")
    if len(absolute.encode()) > MAX_PATH:
        raise ConfigError(f"results directory {shorten(absolute)} is {len(absolute.encode())} bytes long, over"
                          f" {MAX_PATH}: the files in it would pass the system's limit")
    for directory in (Path(results_dir), Path(results_dir) / "experiments", Path(results_dir) / "sweeps"):
        check_writable(directory, f"results directory {results_dir}")


def check_writable(directory: str | Path, what: str) -> None:
    """ConfigError naming `what` unless `directory` is, or can be created as, a directory this process may write."""
    probe = Path(directory)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} is not writable: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} is not writable: {probe} is read-only")


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

    The temporary keeps the target's suffix, for writers that choose the format by it (matplotlib, Pillow), and
    has a name of its own, so that two processes writing the same file (two plots) each replace it whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
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
    fd, tmp = _create_beside(path)
    try:
        text = json.dumps(data, indent=indent, allow_nan=False)  # dumps, unlike dump, uses the C encoder
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file ".<name>.<random>.tmp" beside `path`, open for writing: mode 0666 less the umask, as
    open() makes a file (mkstemp's 0600 would leave the JSON unreadable to the group beside a 0644 PNG)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def append_json_lines(path: str | Path, items: list[Any], new: bool = False) -> int:
    """Append each item as one line of compact JSON, in one write, then fsync; `new` empties the file first.

    A crash leaves every line appended before it whole, and at most one torn line (no newline) after them; a
    failed write (a full disk) takes back what it wrote. Returns the number of bytes written.
    """
    data = "".join(json.dumps(item, separators=(",", ":"), allow_nan=False) + "\n" for item in items).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if new else 0), 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # a write may take less than all of it
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # so that a later append does not follow a torn line
            exc.filename = exc.filename or str(path)  # os.write's errors name no file
            raise
    finally:
        os.close(fd)
    return len(data)


def read_json_lines(path: str | Path) -> list[tuple[Any, int]]:
    """The items of the complete lines of a file of JSON lines, each with the offset just past its line.

    A last line without its newline was torn by a process killed mid-append, and is left out; a complete line
    that is not JSON raises ValueError.
    """
    data = Path(path).read_bytes()
    items, start = [], 0
    while (end := data.find(b"\n", start)) >= 0:
        items.append((json.loads(data[start:end]), end + 1))
        start = end + 1
    return items
