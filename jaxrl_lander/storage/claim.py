"""Claiming an experiment directory before writing it: an OS lock that keeps every second writer out, and the
overwrite that replaces an experiment only once its successor has committed a checkpoint.

The lock is `fcntl.flock` on a hidden file beside the experiment (`experiments/.{name}.lock`), not inside it, so
that an overwrite can swap the directory while holding it. The kernel releases it when its process dies, so a
`kill -9` never leaves a stale lock. The file stays empty (a refused command changes nothing; the holder is found
through the kernel's list of locks) and stays after release: removing a lock file that another process may have
just opened would let two processes lock two different files.

An overwrite trains in `experiments/.{name}.new/`; its first committed checkpoint swaps it into place through
`experiments/.{name}.old/`. The next claim finishes or undoes a swap that a kill interrupted.
"""

import fcntl
import os
import shutil
from pathlib import Path

from jaxrl_lander.config.errors import ConfigError, ExperimentInUse, ResumeError
from jaxrl_lander.storage.files import ExperimentPaths, same_run_on_other_envs
from jaxrl_lander.config.redact import redact
from jaxrl_lander.storage.results import previous_results


def _sibling(paths: ExperimentPaths, suffix: str) -> Path:
    return paths.root.parent / f".{paths.name}.{suffix}"


def holds_experiment(paths: ExperimentPaths) -> bool:
    """Whether the experiment directory holds any file (a run stopped during its start-up leaves empty
    directories only, which a new run may replace)."""
    return paths.root.is_dir() and any(p.is_file() for p in paths.root.rglob("*"))


def _holder(inode: int) -> str:
    """'process PID (its command line)' of the flock on `inode`, from Linux's /proc/locks; elsewhere, or when the
    lock is gone by now, 'another process'."""
    try:
        with open("/proc/locks") as locks:
            pids = [line.split()[4] for line in locks
                    if line.split()[1:2] == ["FLOCK"] and line.split()[5].rsplit(":", 1)[-1] == str(inode)]
        with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError):
        return "another process"
    return f"process {pids[0]} ({redact(command)[:300]})"


def check_rerun(paths: ExperimentPaths, resume: bool, overwrite: bool, can_resume: bool = True) -> None:
    """ConfigError unless the run may write `paths`: an existing experiment needs `resume` or `overwrite` (only
    `overwrite` where the command cannot resume, as `reproduce`)."""
    if resume and overwrite:
        raise ConfigError("--resume continues an experiment and --overwrite replaces it: give one of them")
    if resume and not holds_experiment(paths) and (others := same_run_on_other_envs(paths.root)):
        # the env and its options name the experiment: a resume that leaves out or changes one would start afresh
        raise ConfigError(f"--resume: no experiment {paths.root.name} to continue in {paths.root.parent}, but the"
                          f" same algorithm and seed on another env: {', '.join(others)}; give that run's env_id and"
                          " env options to continue it, or leave out --resume to start this one")
    if not (resume or overwrite) and holds_experiment(paths):
        if not can_resume:
            raise ConfigError(f"{paths.root} already holds an experiment: add --overwrite to replace it (make:"
                              " OVERWRITE=1)")
        raise ConfigError(f"{paths.root} already holds an experiment: add --resume to continue it or --overwrite"
                          " to replace it (make: RESUME=1 or OVERWRITE=1; Python: train(..., resume=True) or"
                          " overwrite=True)")


class ExperimentLock:
    """The exclusive right to write one experiment, held from `acquire()` until `release()` or process death."""

    def __init__(self, paths: ExperimentPaths):
        self.paths, self.path, self._fd = paths, _sibling(paths, "lock"), None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "ExperimentLock":
        """Take the lock, or raise ExperimentInUse naming the process that holds it. Writes nothing but the empty
        lock file, the first time: a refused command leaves every file as it was."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.fstat(fd).st_ino)
            os.close(fd)
            raise ExperimentInUse(f"{self.paths.root} is in use by {holder}; wait for it to end or stop it") from None
        self._fd = fd
        return self

    def check(self) -> None:
        """Raise ExperimentInUse if another process holds the lock now; creates nothing (no lock file: no holder)."""
        if self.path.exists():
            self.acquire().release()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ExperimentLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_starting_afresh(paths: ExperimentPaths) -> None:
    """ResumeError when starting the experiment at `paths` afresh (a resume that found no checkpoint) would delete
    a run that had committed one: its model, or results that list checkpoints. What a run killed or failed before
    its first checkpoint leaves (a metrics journal, partial writes, empty directories, a failure's results) may go."""
    if paths.checkpoints.exists() and not paths.checkpoints.is_dir():
        raise ResumeError(f"cannot resume {paths.root}: {paths.checkpoints.name} is not a directory; nothing was"
                          " changed (move it away, or --overwrite to replace the experiment)")
    done = previous_results(paths)
    kept = [name for name, present in ((paths.model.name, paths.model.exists()),
                                       (paths.results.name, bool(done and done.artifacts.get("checkpoints"))))
            if present]
    if kept:
        raise ResumeError(f"cannot resume {paths.root}: it has no checkpoint to resume from, but holds a run that"
                          f" had some ({', '.join(kept)}); nothing was changed: restore its {paths.checkpoints.name}/,"
                          " or --overwrite to replace it")


def recover_interrupted_overwrite(paths: ExperimentPaths) -> None:
    """Finish the swap of an overwrite killed half-way, or discard an overwrite killed before its first checkpoint
    (called with the lock held). A successor that reached `.new` with the experiment gone had committed a
    checkpoint, so it takes the experiment's place; otherwise the old experiment goes back."""
    staged, old = _sibling(paths, "new"), _sibling(paths, "old")
    if old.exists():
        if not paths.root.exists():
            os.rename(staged if staged.exists() else old, paths.root)
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)


class Overwrite:
    """A run that replaces an existing experiment: it writes to a staging directory until `commit()`."""

    def __init__(self, paths: ExperimentPaths):
        self.final = paths
        self.staged = ExperimentPaths(root=_sibling(paths, "new"), name=paths.name)

    def commit(self) -> ExperimentPaths:
        """Swap the staged run in for the old experiment and delete the old one; the final paths."""
        old = _sibling(self.final, "old")
        os.rename(self.final.root, old)
        os.rename(self.staged.root, self.final.root)
        shutil.rmtree(old)
        return self.final

    def discard(self) -> None:
        """Drop the staged run (it never committed a checkpoint); the old experiment stays as it was."""
        shutil.rmtree(self.staged.root, ignore_errors=True)
