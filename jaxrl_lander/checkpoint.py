"""Orbax checkpoints: the train state every N env steps, and the final policy as a standalone model.

Orbax writes each checkpoint into a temporary directory and renames it into place when complete, so
`latest_step()` only ever sees whole checkpoints.

A periodic checkpoint stores the train state packed into one host array per dtype (all float32 leaves of
params and optimiser state end to end, all int32 leaves, the raw key data). Orbax's cost grows with the number
of arrays: the packed form (3 arrays instead of 38) saves in about a quarter of the time, which matters at one
checkpoint per 1,000 steps. Restoring unpacks with the structure of a freshly built state of the same config.
The final model keeps the ordinary parameter tree.
"""

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxrl_lander.algos.common import TrainState
from jaxrl_lander.errors import UnreadableModel, first_line


def pack(tree) -> dict[str, np.ndarray]:
    """Concatenate the leaves of `tree`, flattened in tree order, into one numpy array per dtype."""
    groups: dict[str, list[np.ndarray]] = {}
    for leaf in jax.device_get(jax.tree.leaves(tree)):
        leaf = np.asarray(leaf)
        groups.setdefault(leaf.dtype.name, []).append(leaf.ravel())
    return {dtype: np.concatenate(parts) for dtype, parts in groups.items()}


def unpack(packed: dict[str, np.ndarray], template):
    """Inverse of pack: rebuild a tree shaped like `template` from the per-dtype arrays."""
    leaves, treedef = jax.tree.flatten(template)
    offsets = dict.fromkeys(packed, 0)
    rebuilt = []
    for leaf in leaves:
        dtype, size = np.dtype(leaf.dtype).name, int(np.size(leaf))
        if dtype not in packed or offsets[dtype] + size > packed[dtype].size:
            raise ValueError("checkpoint does not match the structure of this config's train state")
        rebuilt.append(packed[dtype][offsets[dtype]:offsets[dtype] + size].reshape(np.shape(leaf)))
        offsets[dtype] += size
    if any(offsets[d] != packed[d].size for d in packed):
        raise ValueError("checkpoint does not match the structure of this config's train state")
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in rebuilt])


def _is_closed_loop_report(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _DropUnretrievedReadFailures(logging.Filter):
    """asyncio's log record of a read task whose failure nobody awaits any more, once the read has failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Task exception was never retrieved")


@contextlib.contextmanager
def _orbax_read():
    """Around every orbax restore: if it fails, drop the "Event loop is closed" reports of reads still running.

    Orbax reads the arrays concurrently on an asyncio loop; when one read fails, the loop is closed while the
    others are in flight, and each of them then reports RuntimeError("Event loop is closed") from a reader
    thread: through sys.unraisablehook, or printed through sys.excepthook, a traceback on stderr around the
    caller's own one-line error. A read that fails on its own after the first one has no one left to await it,
    and asyncio logs "Task exception was never retrieved" with its traceback. The filters go in before the
    read, since the first report can come before the failure reaches us, and stay after a failure, since the
    others come later; after a successful read the previous hooks come back and the log filter goes. Anything
    else still goes to the previous hooks and to the log.
    """
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook
    asyncio_log, log_filter = logging.getLogger("asyncio"), _DropUnretrievedReadFailures()

    def unraisable_hook(unraisable) -> None:
        if not _is_closed_loop_report(unraisable.exc_value):
            previous_unraisable(unraisable)

    def except_hook(exc_type, exc, tb) -> None:
        if not _is_closed_loop_report(exc):
            previous_except(exc_type, exc, tb)

    sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook
    asyncio_log.addFilter(log_filter)
    yield  # an exception propagates from here and leaves the filters in place
    sys.unraisablehook, sys.excepthook = previous_unraisable, previous_except
    asyncio_log.removeFilter(log_filter)


def _to_tree(state: TrainState) -> dict[str, Any]:
    # A typed PRNG key is stored as its raw uint32 data.
    return {"state": pack((state.params, state.opt_state)), "key": np.asarray(jax.random.key_data(state.key))}


class CheckpointStore:
    """Checkpoints of one experiment under `directory/<step>/`: train state plus JSON metadata."""

    def __init__(self, directory: str | Path, keep: int = 0, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, create=True, enable_async_checkpointing=async_save
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata"))

    def save(self, step: int, state: TrainState, metadata: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(_to_tree(state)), metadata=ocp.args.JsonSave(metadata)),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, template: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The state saved at `step`, shaped like `template` (a freshly initialised state of the same config)."""
        with _orbax_read():
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore())
            )
        tree = restored.state
        params, opt_state = unpack(tree["state"], (template.params, template.opt_state))
        key = jax.random.wrap_key_data(jnp.asarray(tree["key"], jnp.uint32))
        return TrainState(params=params, opt_state=opt_state, key=key), dict(restored.metadata)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_model(path: str | Path, params, policy_spec: dict[str, Any]) -> None:
    """Save final policy parameters and what is needed to rebuild the network (JSON) as one orbax checkpoint."""
    path = Path(path).absolute()
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            path,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params), policy=ocp.args.JsonSave(policy_spec)),
            force=True,
        )


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(params, policy_spec) from a directory written by save_model; UnreadableModel if it cannot be read."""
    path = Path(path).absolute()
    try:
        with _orbax_read(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(
                path, args=ocp.args.Composite(params=ocp.args.StandardRestore(), policy=ocp.args.JsonRestore())
            )
    except Exception as exc:  # orbax and tensorstore raise many kinds; any of them means unreadable
        raise UnreadableModel(f"model {path} is unreadable ({first_line(exc)})") from None
    return restored.params, dict(restored.policy)
