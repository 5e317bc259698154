"""Errors the command line turns into exit codes (kept free of heavy imports)."""


class TrainingFailed(RuntimeError):
    """Training stopped on a numerical fault; the results JSON says why and the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """An experiment on disk cannot be resumed (an unreadable checkpoint, metrics or results file); the message
    names the file. Raised before anything is written."""
