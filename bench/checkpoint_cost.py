"""What one periodic checkpoint costs the training loop: the time the caller's thread is blocked by a save, the
time until the save is committed (durable, visible to `latest_step()`), and the CPU the process spends on it (all
threads, from the save's start to its commit: what a save takes from training on a machine with few cores), for each
way of saving with orbax.

    python bench/checkpoint_cost.py [--saves 50] [--only store_manager,store] [--dir /tmp] [--out cost.json]

The checkpoint is of the real size: a PPO train state of the default config on LunarLander-v3 and a pending
rollout of the compiled collector's shapes (256 steps x 8 envs), with the metadata a run saves. The options take
turns, one save each per round in a rotating order, so that the disk's and the shared CPUs' moods fall on all of
them alike; a first save of each, before the rounds, is not counted (imports, tracing, first directory). Each save
is waited for before the next, so that a blocked time never includes the previous save's commit. Every option but
store_per_dtype saves the `state` item as the store packs it now (one array of bytes).

  today         the store before its save thread: orbax async checkpointing, a Composite of `state` and `metadata`
  async_off     the same manager with enable_async_checkpointing=False: the caller does the whole save
  no_ocdbt      async off, the `state` item written without OCDBT (a file per array instead of one database)
  lean          async off, `state` by a PyTreeCheckpointHandler without OCDBT and without compression
  single_item   async off, only the state, as a manager's single unnamed item (no Composite, no metadata)
  new_manager   async off, a new CheckpointManager made and closed for every save (what reusing one saves)
  store         jaxrl_lander's CheckpointStore as it is now (a save thread of its own: the caller copies only; the
                `state` item one array of bytes, without OCDBT; orbax's handlers write the items, the store
                commits the step directory)
  store_manager the same store committing through orbax's CheckpointManager, as it did before it owned its step
                directories
  store_per_dtype  store_manager saving the `state` item as it did before the bytes: one array per dtype, the key
                and the rollout's per-dtype arrays, with orbax's default handler (OCDBT)
  handler_only  orbax's StandardCheckpointHandler alone (no OCDBT) writing the `state` item into a new directory: no
                manager, no metadata item, no atomic commit; a floor for any orbax checkpoint of these arrays
  npz_fsync     the same arrays as one npz, fsync'd and renamed into place: a floor, not an option

Prints a table (median, min, max ms per save: caller-blocked, until committed, and CPU), and writes it as JSON
with --out. The CPU is this process's own, all threads (resource.getrusage): other processes on a shared machine
stretch the wall times far more than it.
"""

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxrl_lander.config import make_config
from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.storage.checkpoint import CheckpointStore, _per_dtype_tree, _to_tree

STEP_INTERVAL = 1_000


def real_sized_checkpoint():
    """(state, metadata, rollout) as a PPO run of the default config saves them at a checkpoint inside a rollout."""
    config = make_config("ppo")
    state = make_learner(config, obs_dim=8, action_size=4).init(jax.random.key(0))
    n, b = config.n_steps, config.num_envs
    rng = np.random.default_rng(0)
    rollout = {"obs": rng.normal(size=(n, b, 8)).astype(np.float32),
               "actions": rng.integers(0, 4, size=(n, b)).astype(np.int32),
               **{name: rng.random((n, b)).astype(np.float32) for name in ("rewards", "dones", "valid")},
               "next_obs": rng.normal(size=(b, 8)).astype(np.float32)}
    metadata = {"timestep": 0, "updates": 0, "episodes": 0, "recent_reward_mean": None, "loss": 0.5,
                "wall_time": 1.0, "evaluations": [{"timestep": 1000 * i, "mean": -100.0 + i, "std": 20.0}
                                                  for i in range(10)],
                "saved_at": "2025-01-01T00:00:00+00:00", "config": config.to_dict(), "normalizer": None,
                "rollout_filled": 100, "initialized_from": None}
    return state, metadata, rollout


def _composite(tree, metadata):
    return ocp.args.Composite(state=ocp.args.StandardSave(tree), metadata=ocp.args.JsonSave(metadata))


class OrbaxManager:
    """One CheckpointManager of `state` and `metadata` items; the caller packs the tree, as the store does."""

    def __init__(self, directory: Path, async_save: bool, ocdbt: bool = True, lean: bool = False):
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=async_save)
        state_handler = (ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_compression=False) if lean else
                         None if ocdbt else ocp.StandardCheckpointHandler(use_ocdbt=False))
        handlers = state_handler and {"state": state_handler, "metadata": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(directory, options=options, item_names=None if handlers else
                                             ("state", "metadata"), item_handlers=handlers)
        self.save_args = ocp.args.PyTreeSave if lean else ocp.args.StandardSave

    def save(self, step, state, metadata, rollout):
        self.manager.wait_until_finished()
        self.manager.save(step, args=ocp.args.Composite(state=self.save_args(_to_tree(state, rollout)),
                                                        metadata=ocp.args.JsonSave(dict(metadata, timestep=step))))

    def commit(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


class SingleItem(OrbaxManager):
    def __init__(self, directory: Path):
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(directory, options=options)

    def save(self, step, state, metadata, rollout):
        self.manager.save(step, args=ocp.args.StandardSave(_to_tree(state, rollout)))


class NewManager:
    def __init__(self, directory: Path):
        self.directory = directory

    def save(self, step, state, metadata, rollout):
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
        with ocp.CheckpointManager(self.directory, options=options, item_names=("state", "metadata")) as manager:
            manager.save(step, args=_composite(_to_tree(state, rollout), dict(metadata, timestep=step)))

    def commit(self):
        pass

    def close(self):
        pass


class HandlerOnly:
    def __init__(self, directory: Path):
        self.directory, self.handler = directory, ocp.StandardCheckpointHandler(use_ocdbt=False)

    def save(self, step, state, metadata, rollout):
        path = self.directory / str(step)
        path.mkdir(parents=True)
        self.handler.save(path, args=ocp.args.StandardSave(_to_tree(state, rollout)))
        self.handler.finalize(path)

    def commit(self):
        pass

    def close(self):
        pass


class Store:
    def __init__(self, directory: Path):
        self.store = CheckpointStore(directory)

    def save(self, step, state, metadata, rollout):
        self.store.save(step, state, dict(metadata, timestep=step), rollout)

    def commit(self):
        self.store.wait()

    def close(self):
        self.store.close()


class StoreViaManager(Store):
    """The store's save thread committing through orbax's CheckpointManager (a Composite of `state` and `metadata`),
    as the store did before it owned its step directories; with `per_dtype`, the `state` item it saved before the
    single array of bytes (one array per dtype, the key and the rollout's, with orbax's default handler: OCDBT)."""

    def __init__(self, directory: Path, per_dtype: bool = False):
        super().__init__(directory)
        handlers = None if per_dtype else {"state": ocp.StandardCheckpointHandler(use_ocdbt=False),
                                           "metadata": ocp.JsonCheckpointHandler()}
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.store.directory, options=options, item_handlers=handlers,
                                             item_names=("state", "metadata") if per_dtype else None)
        self.per_dtype = per_dtype

    def save(self, step, state, metadata, rollout):
        tree = _per_dtype_tree(state, rollout) if self.per_dtype else None  # in the caller's thread, as it was

        def commit(step, bytes_tree, metadata):
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree or bytes_tree),
                                                            metadata=ocp.args.JsonSave(metadata)))

        self.store._commit = commit
        super().save(step, state, metadata, rollout)

    def close(self):
        super().close()
        self.manager.close()


class NpzFsync:
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True)

    def save(self, step, state, metadata, rollout):
        tree = _to_tree(state, rollout)
        arrays = {f"{group}.{dtype}": array for group, packed in tree.items()
                  for dtype, array in (packed.items() if isinstance(packed, dict) else [("raw", packed)])}
        path, tmp = self.directory / f"{step}.npz", self.directory / f".{step}.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, metadata=np.frombuffer(json.dumps(metadata).encode(), np.uint8), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def commit(self):
        pass

    def close(self):
        pass


OPTIONS = {
    "today": lambda d: OrbaxManager(d, async_save=True),
    "async_off": lambda d: OrbaxManager(d, async_save=False),
    "no_ocdbt": lambda d: OrbaxManager(d, async_save=False, ocdbt=False),
    "lean": lambda d: OrbaxManager(d, async_save=False, ocdbt=False, lean=True),
    "single_item": SingleItem,
    "new_manager": NewManager,
    "store": Store,
    "store_manager": StoreViaManager,
    "store_per_dtype": lambda d: StoreViaManager(d, per_dtype=True),
    "handler_only": HandlerOnly,
    "npz_fsync": NpzFsync,
}


def cpu_seconds() -> float:
    """CPU time of this process so far, all its threads (orbax saves in several, tensorstore in its own)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(saves: int, directory: Path, only: list[str]) -> dict[str, dict[str, list[float]]]:
    """Seconds per save of each option in `only`, caller-blocked, until committed and of CPU, over `saves`
    interleaved rounds."""
    state, metadata, rollout = real_sized_checkpoint()
    times = {name: {"blocked": [], "committed": [], "cpu": []} for name in only}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        savers = {name: OPTIONS[name](Path(tmp) / name) for name in only}
        for saver in savers.values():  # not counted
            saver.save(0, state, metadata, rollout)
            saver.commit()
        names = list(savers)
        for round_ in range(saves):
            step = (round_ + 1) * STEP_INTERVAL
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                start_cpu, start = cpu_seconds(), time.perf_counter()
                savers[name].save(step, state, metadata, rollout)
                blocked = time.perf_counter()
                savers[name].commit()
                committed, committed_cpu = time.perf_counter(), cpu_seconds()
                times[name]["blocked"].append(blocked - start)
                times[name]["committed"].append(committed - start)
                times[name]["cpu"].append(committed_cpu - start_cpu)
        for saver in savers.values():
            saver.close()
    return times


def summary(times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, float]]]:
    return {name: {kind: {"median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3, "max_ms": max(t) * 1e3}
                   for kind, t in kinds.items()} for name, kinds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=50, help="rounds, one save of each option per round")
    parser.add_argument("--only", default=",".join(OPTIONS),
                        help="the options to measure, comma-separated (all by default; store is always one)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the checkpoints are written (a temporary directory under it)")
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    args = parser.parse_args()
    only = list(dict.fromkeys(["store", *args.only.split(",")]))
    if unknown := set(only) - set(OPTIONS):
        parser.error(f"no such option {', '.join(sorted(unknown))}: the options are {', '.join(OPTIONS)}")
    args.dir.mkdir(parents=True, exist_ok=True)
    table = summary(measure(args.saves, args.dir, only))
    baseline = "today" if "today" in table else "store"
    today, store = table[baseline]["blocked"]["median_ms"], table["store"]["cpu"]["median_ms"]
    print(f"{args.saves} saves each, ms per save (median min max); blocked ratio = blocked median / {baseline}'s, cpu"
          " ratio = CPU median / the store's")
    print(f"{'option':<15} {'blocked':>23} {'committed':>23} {'cpu':>23}  {'ratios':>11}")
    for name, row in table.items():
        cells = "".join(f" {row[kind]['median_ms']:>7.2f} {row[kind]['min_ms']:>7.2f} {row[kind]['max_ms']:>7.2f}"
                        for kind in ("blocked", "committed", "cpu"))
        print(f"{name:<15}{cells}  {row['blocked']['median_ms'] / today:>5.2f} {row['cpu']['median_ms'] / store:>5.2f}")
    if args.out:
        args.out.write_text(json.dumps({"saves": args.saves, "directory": str(args.dir), "options": table},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
