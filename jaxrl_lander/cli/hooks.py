"""The command line's process hooks (light imports, set once by main()): one error line when orbax fails to read,
a Ctrl-C that ends the process wherever it lands, envpool's Box2D envs alone, and one CPU device per core for
vectorised agents."""

import logging
import os
import signal
import sys
import threading
import types

from jaxrl_lander.config.errors import Terminated


class _DropReadFailureEchoes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # asyncio's words for a Task, Future or _GatheringFuture whose failure nobody awaits
        return "exception was never retrieved" not in record.getMessage().partition("\n")[0]


def drop_read_failure_echoes() -> None:
    """Keep one error line when orbax fails to read a checkpoint or model (the process's hooks; the command line
    owns the process, so it sets them once).

    Orbax reads the arrays concurrently on an asyncio loop; when one read fails, the loop closes while the others
    are in flight, and each of them reports RuntimeError("Event loop is closed") from a reader thread, through
    sys.unraisablehook or sys.excepthook, after the caller's own error; a read that fails on its own later is logged
    by asyncio as "Task (or Future) exception was never retrieved", or reported with its orbax coroutine when that
    is finalised unawaited. Those reports are dropped; any other goes on."""
    def closed_loop(exc: BaseException | None) -> bool:
        return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

    def orbax_coroutine(obj) -> bool:
        return "/orbax/checkpoint/" in getattr(getattr(obj, "cr_code", None), "co_filename", "")

    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = lambda u: (None if closed_loop(u.exc_value) or orbax_coroutine(u.object)
                                    else previous_unraisable(u))
    sys.excepthook = lambda t, e, tb: None if closed_loop(e) else previous_except(t, e, tb)
    logging.getLogger("asyncio").addFilter(_DropReadFailureEchoes())


def catch_interrupts() -> None:
    """Make a Ctrl-C (SIGINT) a KeyboardInterrupt, and a SIGTERM a Terminated (one), that main() can catch,
    wherever they land (each unless it already has another handler, or is ignored, as SIGINT in a job started in
    the background).

    Two places would lose one: an import (an extension module such as numpy or jaxlib that it stops while loading
    raises ImportError, or leaves the process to crash later), and a garbage-collection callback or finaliser
    (JAX runs one at every collection), where Python reports it as "Exception ignored" and goes on. There, the
    signal is sent again a moment later instead, until it lands in ordinary code (or in the training loop, which
    then stops at its next step)."""
    if threading.current_thread() is not threading.main_thread():
        return
    caught = [sig for sig, untouched in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
              if signal.getsignal(sig) is untouched]
    previous = sys.unraisablehook

    def again(signum: int) -> None:
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()

    def on_signal(signum, frame) -> None:
        while frame is not None:
            if frame.f_code.co_filename.startswith("<frozen importlib."):
                return again(signum)
            frame = frame.f_back
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt

    def unraisable(report) -> None:
        if not isinstance(report.exc_value, KeyboardInterrupt):
            return previous(report)
        again(getattr(report.exc_value, "signum", signal.SIGINT))

    for sig in caught:
        signal.signal(sig, on_signal)
    if caught:
        sys.unraisablehook = unraisable


def cpu_device_per_core() -> None:
    """Have JAX's CPU platform show one device per CPU core (set before JAX starts its backends; a count given in
    XLA_FLAGS already is kept), so that vectorised agents' update is split over the cores: XLA runs each device's
    part on its own thread. Other platforms (a GPU) are not touched."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={os.cpu_count() or 1}".strip()


def envpool_box2d_only() -> None:
    """Have envpool register only its Box2D envs, LunarLander's family, when this process first imports it (if
    ever): the package's own import registers every family it ships (Atari, MuJoCo, ...), about 0.6 s of a run's
    start-up on a 2-core CPU; envs/envpool.py imports the Box2D registrations itself. The command line owns its
    process, which uses no other envpool env. Nothing once envpool is imported."""
    if "envpool" not in sys.modules:
        sys.modules.setdefault("envpool.entry", types.ModuleType("envpool.entry"))  # what registers them all
