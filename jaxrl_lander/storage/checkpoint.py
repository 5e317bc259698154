"""Orbax checkpoints: the train state every N env steps (the final policy's model: model.py).

Each checkpoint is written into a temporary directory and renamed into place when complete, so `latest_step()`
only ever sees whole checkpoints.

A periodic checkpoint's `state` item is one host array of bytes: a 16-byte header (the byte counts of the train
state and of the pending rollout, little-endian uint64), then the raw bytes of every leaf of params and optimiser
state in tree order, the key's raw uint32 data, and the partly collected rollout's arrays when there is one, end to
end. Orbax's CPU cost grows with the number of arrays it writes (about 2 ms each, on top of some 6 ms per save):
one array instead of some 40 leaves, or of the 3 to 5 of an earlier packing per dtype, matters at one checkpoint
per 1,000 steps on a machine whose few cores are training. The item is written without OCDBT (a plain zarr array
instead of a database of one entry, a few ms less per save). Restoring splits the bytes by the leaves (dtype,
shape) of a freshly built state of the same config; the header's counts check that they are that state's (and
rollout's), and say whether a rollout follows. Checkpoints of the earlier layout (one array per dtype, the key and
the rollout's per-dtype arrays, under OCDBT) still restore: orbax reads either format, and the restored tree's keys
tell the layouts apart.

A periodic save returns once the checkpoint is copied to host memory: threads of the store's own then write it
with orbax, one save at a time in step order, while training goes on (orbax's own async checkpointing still
blocked its caller for most of a save: directories, metadata and tensorstore set up in the caller's thread). Up to
CheckpointStore.MAX_PENDING saves may wait, which bounds memory and hands a slow disk's backpressure to the loop.

The store writes each checkpoint's items with orbax's handlers and commits the step directory itself (temporary
name, then rename), rather than through orbax's CheckpointManager: the manager's save (its step bookkeeping, a
Composite of items, atomicity helpers and their threads) costs as much CPU again as the handler that writes the
arrays (bench/checkpoint_cost.py). The layout is the manager's: it reads these checkpoints (tested).
"""

import contextlib
import copy
import errno
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxrl_lander.core.algos.base import TrainState
from jaxrl_lander.config.errors import WriteFailed, first_line
from jaxrl_lander.config.redact import shorten
from jaxrl_lander.storage.files import ORBAX_TMP_MARK


STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's name for a step's own metadata file
MISMATCH = "checkpoint does not match the structure of this config's train state"


def pack(tree) -> dict[str, np.ndarray]:
    """Concatenate the leaves of `tree`, flattened in tree order, into one numpy array per dtype (the layout of
    the checkpoints written before the single array of bytes: what unpack reads them with)."""
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
            raise ValueError(MISMATCH)
        rebuilt.append(packed[dtype][offsets[dtype]:offsets[dtype] + size].reshape(np.shape(leaf)))
        offsets[dtype] += size
    if any(offsets[d] != packed[d].size for d in packed):
        raise ValueError(MISMATCH)
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in rebuilt])


_HEADER = np.dtype("<u8")  # the byte counts of the state and of the rollout that follow the header


def _raw(leaves) -> list[np.ndarray]:
    """The leaves as contiguous host arrays (on the host once, all together)."""
    return [np.ascontiguousarray(leaf) for leaf in jax.device_get(list(leaves))]


def _state_leaves(state: TrainState) -> list:
    # A typed PRNG key is stored as its raw uint32 data, after the leaves of params and optimiser state.
    return [*jax.tree.leaves((state.params, state.opt_state)), jax.random.key_data(state.key)]


def _to_tree(state: TrainState, rollout: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """The `state` item of a checkpoint: one uint8 array, the header then the state's and the rollout's bytes."""
    state_leaves = _raw(_state_leaves(state))
    rollout_leaves = _raw(jax.tree.leaves(rollout)) if rollout is not None else []
    header = np.array([sum(x.nbytes for x in state_leaves), sum(x.nbytes for x in rollout_leaves)], _HEADER)
    parts = [header, *state_leaves, *rollout_leaves]
    return {"bytes": np.concatenate([x.reshape(-1).view(np.uint8) for x in parts])}


def _split(data: np.ndarray, template: list) -> list[np.ndarray]:
    """The arrays shaped and typed like the leaves of `template`, read from `data` (bytes) end to end."""
    arrays, offset = [], 0
    for leaf in template:
        dtype, shape = np.dtype(leaf.dtype), np.shape(leaf)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        arrays.append(data[offset:offset + size].view(dtype).reshape(shape))
        offset += size
    return arrays


def _nbytes(leaves) -> int:
    return sum(int(np.size(leaf)) * np.dtype(leaf.dtype).itemsize for leaf in leaves)


def _from_bytes(data: np.ndarray, template: TrainState, rollout: dict[str, np.ndarray] | None
                ) -> tuple[TrainState, dict[str, np.ndarray] | None]:
    """Inverse of _to_tree: the state shaped like `template`, and the rollout shaped like the arrays of `rollout`
    (None when the checkpoint holds none, or `rollout` is None)."""
    data = np.ascontiguousarray(data, np.uint8).reshape(-1)
    if data.size < 2 * _HEADER.itemsize:
        raise ValueError(MISMATCH)
    state_bytes, rollout_bytes = (int(n) for n in data[:2 * _HEADER.itemsize].view(_HEADER))
    state_template = [*jax.tree.leaves((template.params, template.opt_state)),
                      jax.ShapeDtypeStruct(jnp.shape(jax.random.key_data(template.key)), jnp.uint32)]
    rollout_leaves, rollout_def = jax.tree.flatten(rollout)
    if (state_bytes != _nbytes(state_template) or data.size != 2 * _HEADER.itemsize + state_bytes + rollout_bytes
            or (rollout is not None and rollout_bytes not in (0, _nbytes(rollout_leaves)))):
        raise ValueError(MISMATCH)
    body = data[2 * _HEADER.itemsize:].copy()  # aligned, and not a view of what orbax returned
    *leaves, key = _split(body[:state_bytes], state_template)
    params, opt_state = jax.tree.unflatten(jax.tree.structure((template.params, template.opt_state)),
                                           [jnp.asarray(x) for x in leaves])
    state = TrainState(params=params, opt_state=opt_state, key=jax.random.wrap_key_data(jnp.asarray(key)))
    pending = None
    if rollout is not None and rollout_bytes:
        pending = jax.tree.unflatten(rollout_def, _split(body[state_bytes:], rollout_leaves))
    return state, pending


def _per_dtype_tree(state: TrainState, rollout: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """A `state` item of the earlier layout, as checkpoints were written before the single array of bytes (for
    tests of their restore, and for comparing the costs of the two)."""
    tree = {"state": pack((state.params, state.opt_state)), "key": np.array(jax.random.key_data(state.key))}
    if rollout is not None:
        tree["rollout"] = pack(rollout)
    return tree


def _from_per_dtype(tree: dict[str, Any], template: TrainState, rollout: dict[str, np.ndarray] | None
                    ) -> tuple[TrainState, dict[str, np.ndarray] | None]:
    """The state and rollout of a checkpoint of the earlier layout: `state` and `rollout` packed per dtype by
    pack(), and the raw `key`."""
    params, opt_state = unpack(tree["state"], (template.params, template.opt_state))
    key = jax.random.wrap_key_data(jnp.asarray(tree["key"], jnp.uint32))
    pending = None
    if rollout is not None and "rollout" in tree:
        pending = jax.device_get(unpack(tree["rollout"], rollout))
    return TrainState(params=params, opt_state=opt_state, key=key), pending


class _NothingToMerge(logging.Filter):
    """Orbax warns, at every save of an item written without OCDBT, that it found no OCDBT parts to merge: the
    layout chosen here, not a fault. Only that warning is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


logging.getLogger("absl").addFilter(_NothingToMerge())


_STEP_NAME = re.compile(r"0|[1-9][0-9]*")  # a step's directory: its number as str(step) writes it, nothing more


def committed_steps(directory: Path) -> list[int]:
    """The steps of the committed checkpoints under `directory`: the directories named by a step alone (one being
    written, or being discarded, has a temporary name; a name edited by hand, "0050" or "²", is not a step)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if _STEP_NAME.fullmatch(p.name) and p.is_dir())


def discard(checkpoint: Path) -> None:
    """Delete a committed checkpoint directory so that no kill leaves it half deleted: it is first renamed out of
    the steps' names (to a temporary one that the next claim of the experiment clears), then removed."""
    doomed = checkpoint.with_name(f"{checkpoint.name}{ORBAX_TMP_MARK}-discarded-{time.time_ns()}")
    os.rename(checkpoint, doomed)
    shutil.rmtree(doomed)


class CheckpointStore:
    """Checkpoints of one experiment under `directory/<step>/`: the `state` item (orbax) and the `metadata` item
    (orbax's JSON item), in orbax's layout: orbax's own CheckpointManager reads them.

    The store owns the step directories rather than handing them to orbax's CheckpointManager, whose save costs
    twice the CPU of the handler that writes the arrays (bench/checkpoint_cost.py): it writes both items into a
    temporary directory beside the step's, named as orbax names its own, then renames it into place; a kill before
    the rename leaves only that temporary directory, which the next claim of the experiment clears.

    With `async_save` a save is committed by a thread while its caller goes on. Up to MAX_PENDING saves wait or are
    being written, committed one at a time in step order; a further save first waits for the oldest. `wait()` (or
    `close()`) returns once all are committed and raises the first failure, once; the saves after a failed one are
    not made. Reads first wait for the saves in flight, without taking a failure: that stays for the next save,
    `wait()` or `close()`.
    """

    MAX_PENDING = 4  # a PPO rollout of 2,048 steps holds two checkpoints of the spec's grid: neither waits

    def __init__(self, directory: str | Path, keep: int = 0, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.async_save = async_save
        # The `state` item without OCDBT: see the module's docstring. Handlers are reused: making one costs.
        self._state_handler = ocp.StandardCheckpointHandler(use_ocdbt=False)
        self._metadata_handler = ocp.JsonCheckpointHandler()
        self._pending: list[threading.Thread] = []  # saves not yet ended, oldest first; each waits for the one before
        self._failure: tuple[int, BaseException] | None = None  # the first failed commit's step, and why

    def save(self, step: int, state: TrainState, metadata: dict[str, Any],
             rollout: dict[str, np.ndarray] | None = None) -> None:
        """Save `state` and `metadata` at `step`, with the partly collected `rollout` (numpy arrays) when given.
        Returns once they are copied: the caller may change or reuse them (see the module's docstring); raises
        WriteFailed when an earlier save failed, this one not made."""
        tree, metadata = _to_tree(state, rollout), copy.deepcopy(metadata)
        self._raise_failure()
        if not self.async_save:
            with orbax_writes(f"checkpoint {step}"):
                self._commit(step, tree, metadata)
            return
        self._pending = [t for t in self._pending if t.is_alive()]
        if len(self._pending) >= self.MAX_PENDING:
            self._pending.pop(0).join()
        # Not a daemon: a save in flight when the interpreter exits is committed, not cut short.
        before = self._pending[-1] if self._pending else None
        saving = threading.Thread(target=self._commit_after, args=(before, step, tree, metadata),
                                  name=f"checkpoint {step}")
        saving.start()
        self._pending.append(saving)

    def _commit_after(self, before: threading.Thread | None, step: int, tree: dict[str, Any],
                      metadata: dict[str, Any]) -> None:
        if before is not None:
            before.join()
        if self._failure is not None:  # an earlier save failed: none after it is made
            return
        try:
            self._commit(step, tree, metadata)
        except BaseException as exc:  # raised in the caller's thread by its next save, wait or close
            self._failure = step, exc

    def _commit(self, step: int, tree: dict[str, Any], metadata: dict[str, Any]) -> None:
        final = self.directory / str(step)
        if final.exists():
            raise FileExistsError(errno.EEXIST, f"checkpoint {step} already exists", str(final))
        started = time.time_ns()
        tmp = self.directory / f"{step}{ORBAX_TMP_MARK}-{started}"
        tmp.mkdir(parents=True)
        try:
            (tmp / "metadata").mkdir()  # the JSON handler writes into its item's directory; the state's makes its own
            self._state_handler.save(tmp / "state", args=ocp.args.StandardSave(tree))
            self._state_handler.finalize(tmp / "state")
            self._metadata_handler.save(tmp / "metadata", args=ocp.args.JsonSave(metadata))
            self._metadata_handler.finalize(tmp / "metadata")
            (tmp / STEP_METADATA).write_text(json.dumps(self._step_metadata(started)))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.keep:
            for old in self._steps()[:-self.keep]:
                try:
                    discard(self.directory / str(old))
                except OSError as exc:  # the step saved is whole: say what did fail
                    raise WriteFailed(f"could not remove checkpoint {old} for keep_checkpoints = {self.keep} "
                                      f"(checkpoint {step} is saved; {exc.strerror or first_line(exc)})") from None

    def _step_metadata(self, started: int) -> dict[str, Any]:
        """What orbax's CheckpointManager writes beside a step's items (which handler wrote which item, when): it
        reads a step without it, but warns at every step it lists."""
        handlers = {"state": self._state_handler, "metadata": self._metadata_handler}
        return {"item_handlers": {name: f"{type(h).__module__}.{type(h).__qualname__}" for name, h in handlers.items()},
                "metrics": {}, "performance_metrics": {}, "init_timestamp_nsecs": started,
                "commit_timestamp_nsecs": time.time_ns(), "custom_metadata": {}}

    def _steps(self) -> list[int]:
        return committed_steps(self.directory)

    def _settle(self) -> None:
        """Wait until every save made has ended, committed or failed."""
        for saving in self._pending:
            saving.join()
        self._pending = []

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        self._settle()
        return self._steps()

    def metadata(self, step: int) -> dict[str, Any]:
        """The JSON metadata saved at `step`, without reading the state."""
        self._settle()
        return dict(self._metadata_handler.restore(self._item(step, "metadata"), args=ocp.args.JsonRestore()))

    def _item(self, step: int, name: str) -> Path:
        path = self.directory / str(step) / name
        if not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"checkpoint {step} has no {name} item", str(path))
        return path

    def restore(self, step: int, template: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The state saved at `step`, shaped like `template` (a freshly initialised state of the same config)."""
        state, metadata, _ = self.restore_run(step, template)
        return state, metadata

    def restore_run(self, step: int, template: TrainState, rollout: dict[str, np.ndarray] | None = None
                    ) -> tuple[TrainState, dict[str, Any], dict[str, np.ndarray] | None]:
        """As `restore`, plus the partly collected rollout shaped like the arrays of `rollout` (None when the
        checkpoint holds none)."""
        metadata = self.metadata(step)
        tree = self._state_handler.restore(self._item(step, "state"), args=ocp.args.StandardRestore())
        if set(tree) == {"bytes"}:
            state, pending = _from_bytes(np.asarray(tree["bytes"]), template, rollout)
        elif {"state", "key"} <= set(tree) <= {"state", "key", "rollout"}:  # the earlier layout
            state, pending = _from_per_dtype(tree, template, rollout)
        else:
            raise ValueError(MISMATCH)
        return state, metadata, pending

    def run_metadata(self, step: int) -> dict[str, Any]:
        """The metadata of the checkpoint at `step` as a resume reads it, each value checked (ValueError naming the
        first one that is not usable: a checkpoint's files may have been edited or damaged)."""
        meta = self.metadata(step)
        if meta.get("timestep") != step or isinstance(meta.get("timestep"), bool):
            raise ValueError(f"its metadata's timestep {shorten(meta.get('timestep'))} is not its step {step}")
        for name in ("updates", "rollout_filled"):
            value = meta.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"its metadata's {name} must be an integer >= 0, got {shorten(value)}")
        wall, loss = meta.get("wall_time"), meta.get("loss")
        if not isinstance(wall, (int, float)) or isinstance(wall, bool) or not 0 <= wall < float("inf"):
            raise ValueError(f"its metadata's wall_time must be a number >= 0, got {shorten(wall)}")
        if loss is not None and (not isinstance(loss, (int, float)) or isinstance(loss, bool)):
            raise ValueError(f"its metadata's loss must be a number or null, got {shorten(loss)}")
        evaluations = meta.get("evaluations")
        if not isinstance(evaluations, list) or not all(
                isinstance(e, dict) and isinstance(e.get("timestep"), int) and isinstance(e.get("mean"), (int, float))
                for e in evaluations):
            raise ValueError("its metadata's evaluations must be a list of {timestep, mean, ...}")
        if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("normalizer"), (dict, type(None))):
            raise ValueError("its metadata's config must be an object, and its normalizer an object or null")
        return meta

    def wait(self) -> None:
        """Wait until every save made is committed; WriteFailed naming the step of the first that failed (once)."""
        self._settle()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            self._settle()  # the saves queued after the failed one have seen it, and ended unmade
            (step, exc), self._failure = self._failure, None
            with orbax_writes(f"checkpoint {step}"):
                raise exc

    def close(self) -> None:
        self.wait()


@contextlib.contextmanager
def orbax_writes(what: str):
    """Turn any failure of an orbax write (tensorstore reports a full disk as a ValueError) into WriteFailed."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as exc:
        raise WriteFailed(f"could not write {what} ({os_error(exc) or first_line(exc)})") from None


def os_error(exc: BaseException) -> str | None:
    """The operating system's words for the error under `exc` ("No space left on device"), when it has one:
    tensorstore buries it at the end of a long message, as os_error_code='28'."""
    code = getattr(exc, "errno", None) or next(iter(re.findall(r"os_error_code='(\d+)'", str(exc))), None)
    return os.strerror(int(code)) if code else None
