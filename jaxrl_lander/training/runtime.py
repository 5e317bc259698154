"""The process a run lives in: JAX devices, the compilation cache, compile time, package versions, signals."""

import dataclasses
import os
import platform
import signal
import threading
from importlib import metadata
from pathlib import Path

import jax

from jaxrl_lander.config.errors import ConfigError

PACKAGES = ["jax", "jaxlib", "flax", "optax", "gymnasium", "box2d", "numpy", "orbax-checkpoint", "chex", "envpool"]
DEVICE_CHOICES = ("auto", "cpu", "gpu", "tpu")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Keep compiled XLA programs on disk so a second run with the same shapes skips compilation.

    The directory is `path`, else $JAXRL_LANDER_JAX_CACHE, else ~/.cache/jaxrl_lander/jax; an empty
    $JAXRL_LANDER_JAX_CACHE turns the cache off. Returns the directory in use, or None.
    """
    if path is None:
        path = os.environ.get("JAXRL_LANDER_JAX_CACHE", str(Path.home() / ".cache" / "jaxrl_lander" / "jax"))
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return path


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _device(name: str) -> jax.Device:
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"unknown device '{name}' (choose from {', '.join(DEVICE_CHOICES)})")
    if name == "auto":
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except RuntimeError:
        raise ConfigError(f"no {name.upper()} is visible to JAX on this machine") from None


@dataclasses.dataclass(frozen=True)
class Devices:
    """Where the update runs, and where the per-step action sampling runs."""

    update: jax.Device
    act: jax.Device

    @classmethod
    def resolve(cls, update: str = "auto", act: str = "auto") -> "Devices":
        """'auto' updates on JAX's default device (the GPU when JAX's CUDA build is installed) and acts on the
        host CPU: sampling a few actions per step is launch- and transfer-bound, and on an H200 the CPU ran it
        faster than the GPU did (docs/benchmarks.md). Where JAX hides the CPU, acting follows the update."""
        update_device = _device(update)
        if act != "auto":
            return cls(update_device, _device(act))
        try:
            return cls(update_device, jax.devices("cpu")[0])
        except RuntimeError:
            return cls(update_device, update_device)

    def describe(self) -> dict[str, str]:
        return {"platform": self.update.platform, "device_kind": self.update.device_kind,
                "device": str(self.update), "act_device": str(self.act)}


class CompileClock:
    """Seconds JAX has spent tracing, lowering and compiling in this process since the clock was made."""

    _EVENTS = {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
    _total = 0.0
    _listening = False

    def __init__(self):
        if not CompileClock._listening:  # jax.monitoring cannot remove a listener: one for the process
            jax.monitoring.register_event_duration_secs_listener(CompileClock._count)
            CompileClock._listening = True
        self._start = CompileClock._total

    @staticmethod
    def _count(event: str, duration: float, **_) -> None:
        if event in CompileClock._EVENTS:
            CompileClock._total += duration

    def seconds(self) -> float:
        return CompileClock._total - self._start


class StopOnSignal:
    """While active, SIGINT and SIGTERM ask the run to stop at its next step instead of killing it.

    A second signal gets the previous behaviour back (Ctrl-C twice still interrupts at once).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "StopOnSignal":
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __call__(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()
