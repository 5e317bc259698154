"""The errors the command line turns into exit codes (kept free of heavy imports)."""

import signal

# The optional modules a command may need, and the extra of the package that installs each.
EXTRAS = {"matplotlib": "plot", "PIL": "plot", "tensorboardX": "tensorboard", "optuna": "tune", "psycopg": "tune",
          "envpool": "envpool"}


def install_hint(module: str) -> str:
    """How to install the optional `module` (one of EXTRAS)."""
    return f"pip install 'jaxrl_lander[{EXTRAS[module]}]' (make installs it)"


class ConfigError(ValueError):
    """A configuration or command-line value is unusable; the message names the problem."""


class TrainingFailed(RuntimeError):
    """Training stopped on a numerical fault, or on a file it could not write (`write_failed`: a full disk, which a
    resume gets past once there is room); the results JSON says why and the last good checkpoint is kept."""

    def __init__(self, message: str, write_failed: bool = False):
        super().__init__(message)
        self.write_failed = write_failed


class SweepFailed(RuntimeError):
    """One or more seeds of a sweep exited with an error; the other seeds' experiments are kept."""


class UnreadableModel(RuntimeError):
    """A trained model directory is missing or cannot be loaded; the message names it."""


class ResumeError(RuntimeError):
    """An experiment on disk cannot be resumed (an unreadable checkpoint, metrics or results file); the message
    names the file. Raised before anything is written."""


def first_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message: enough for a one-line error."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class ExperimentInUse(RuntimeError):
    """Another process holds the experiment's lock; the message names it. Raised before anything is written."""


class WriteFailed(RuntimeError):
    """A file of the run could not be written (a full disk, a read-only or vanished directory); the message names
    what was being written and why."""


class Interrupted(RuntimeError):
    """A command stopped by a signal after saving what it had; `signum` gives its exit status, 128 + signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the host or the accelerator ran out of memory: Python's MemoryError, or an XLA runtime
    error whose status is RESOURCE_EXHAUSTED or whose message says "Out of memory" (an allocation failing while a
    computation is dispatched comes as INTERNAL). JAX raises both as one exception type, its status in its text."""
    text = str(exc)
    return isinstance(exc, MemoryError) or (type(exc).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and (
        text.startswith("RESOURCE_EXHAUSTED") or "Out of memory" in text))


class Terminated(KeyboardInterrupt):
    """A SIGTERM outside a training loop (which stops at its next step): raised where it lands, as Ctrl-C raises
    KeyboardInterrupt (a BaseException, so that no handler of ordinary errors takes it for a failure)."""

    signum = int(signal.SIGTERM)
