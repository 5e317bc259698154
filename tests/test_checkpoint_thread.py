"""The store's save threads: a save returns before its commit, yet every guarantee of a synchronous save holds
(visible only when whole, committed one at a time in order, a bounded number waiting, failures raised once and
named with nothing made after them, the caller's arrays its own again, nothing left running, a kill -9 costing at
most the saves in flight); and what the store writes is orbax's layout, read by orbax's own CheckpointManager."""

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxrl_lander.config.errors import WriteFailed
from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.config import make_config
from jaxrl_lander.storage import checkpoint
from jaxrl_lander.storage.checkpoint import CheckpointStore, _to_tree, committed_steps


def _state(seed=0):
    return make_learner(make_config("ppo"), obs_dim=8, action_size=4).init(jax.random.key(seed))


def _rollout(value=0.0):
    return {"obs": np.full((4, 2, 8), value, np.float32), "actions": np.arange(8, dtype=np.int32).reshape(4, 2)}


def _held(store, monkeypatch):
    """The store's orbax saves, each held until the returned event is set (10 s at most: a store that saves in
    its caller's thread then finds the checkpoint already there)."""
    release, real_save = threading.Event(), store._commit

    def held_save(*args, **kwargs):
        release.wait(10)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(store, "_commit", held_save)
    return release


def test_a_save_returns_before_its_commit_and_wait_makes_it_whole_and_restorable(tmp_path, monkeypatch):
    state = _state()
    store = CheckpointStore(tmp_path / "ckpt")
    release = _held(store, monkeypatch)
    started = time.perf_counter()
    store.save(1000, state, {"timestep": 1000}, _rollout(3.0))
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "ckpt" / "1000").exists()
    release.set()
    store.wait()
    assert store.all_steps() == [1000] and store.latest_step() == 1000
    restored, meta, rollout = store.restore_run(1000, _state(seed=5), _rollout())
    store.close()
    assert meta == {"timestep": 1000}
    jax.tree.map(np.testing.assert_array_equal, (restored.params, restored.opt_state), (state.params, state.opt_state))
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(state.key))
    jax.tree.map(np.testing.assert_array_equal, rollout, _rollout(3.0))


def test_saves_up_to_max_pending_do_not_wait_for_each_other(tmp_path, monkeypatch):
    """Two checkpoints due at one due point (a PPO rollout of 2,048 steps holds two) cost their caller only the
    copies: the second does not wait for the first's commit; one more than MAX_PENDING does."""
    store = CheckpointStore(tmp_path / "ckpt")
    release = _held(store, monkeypatch)
    steps = [1000 * (i + 1) for i in range(CheckpointStore.MAX_PENDING)]
    started = time.perf_counter()
    for step in steps:
        store.save(step, _state(), {"timestep": step})
    assert time.perf_counter() - started < 5  # none waited for a held commit (10 s)
    assert store._steps() == []
    threading.Timer(0.5, release.set).start()
    one_more = steps[-1] + 1000
    store.save(one_more, _state(), {"timestep": one_more})  # waits for the oldest, released after 0.5 s
    assert 1000 in store._steps()
    store.close()
    assert CheckpointStore(tmp_path / "ckpt").all_steps() == [*steps, one_more]


def test_saves_queued_after_a_failed_one_are_not_made(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "ckpt")
    release, real_commit = _held(store, monkeypatch), store._commit

    def failing_at_2000(step, *args):
        if step == 2000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_commit(step, *args)

    monkeypatch.setattr(store, "_commit", failing_at_2000)
    for step in (1000, 2000, 3000, 4000):
        store.save(step, _state(), {"timestep": step})
    release.set()
    with pytest.raises(WriteFailed, match=r"^could not write checkpoint 2000 \(No space left on device\)$"):
        store.wait()
    store.close()  # raised once
    assert CheckpointStore(tmp_path / "ckpt").all_steps() == [1000]  # no hole at 2000 with 3000 after it


def test_orbax_checkpoint_manager_reads_what_the_store_writes(tmp_path, caplog):
    state = _state()
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    for step in (1000, 2000, 3000):
        store.save(step, state, {"timestep": step, "loss": 0.5}, _rollout(2.0))
    store.close()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["2000", "3000"]  # nothing else left there
    caplog.set_level(logging.INFO)
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    assert manager.all_steps() == [2000, 3000] and manager.latest_step() == 3000
    restored = manager.restore(3000, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                             metadata=ocp.args.JsonRestore()))
    manager.close()
    assert dict(restored.metadata) == {"timestep": 3000, "loss": 0.5}
    assert restored.state["bytes"].dtype == np.uint8  # the store's one array of bytes, restored by orbax alone
    np.testing.assert_array_equal(restored.state["bytes"], _to_tree(state, _rollout(2.0))["bytes"])
    assert manager.metadata(3000).item_handlers["state"].endswith("StandardCheckpointHandler")
    assert not [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]  # a step's own file


def test_only_directories_named_as_a_step_is_named_are_steps(tmp_path):
    """A name edited by hand ("0050", "²", a file "5000") is not a checkpoint: not listed, not pruned."""
    directory = tmp_path / "ckpt"
    for name in ("0050", "²", "1e3", "-1000", "1000.orbax-checkpoint-tmp-1"):
        (directory / name).mkdir(parents=True)
    (directory / "5000").write_text("not a checkpoint")
    assert committed_steps(directory) == []
    store = CheckpointStore(directory, keep=1)
    for step in (100, 200):
        store.save(step, _state(), {"timestep": step})
    store.close()
    assert committed_steps(directory) == [200]
    assert {p.name for p in directory.iterdir()} == {"0050", "²", "1e3", "-1000", "1000.orbax-checkpoint-tmp-1",
                                                    "5000", "200"}


def test_a_failed_prune_says_so_and_that_the_step_is_saved(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "ckpt", keep=1, async_save=False)
    store.save(100, _state(), {"timestep": 100})

    def busy(path):
        raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    monkeypatch.setattr(checkpoint, "discard", busy)
    with pytest.raises(WriteFailed, match=r"^could not remove checkpoint 100 for keep_checkpoints = 1 "
                                          r"\(checkpoint 200 is saved; Device or resource busy\)$"):
        store.save(200, _state(), {"timestep": 200})
    assert store.all_steps() == [100, 200]
    store.close()


def test_reads_wait_for_the_save_in_flight(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "ckpt")
    release = _held(store, monkeypatch)
    store.save(1000, _state(), {"timestep": 1000})
    threading.Timer(0.3, release.set).start()
    assert store.latest_step() == 1000  # not None: the read waited for the commit
    store.close()


def test_saves_in_a_row_are_committed_in_order_one_at_a_time_and_keep_holds(tmp_path, monkeypatch):
    state = _state()
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    real_save, lock = store._commit, threading.Lock()
    order, in_flight, most = [], [0], [0]

    def counted_save(step, *args, **kwargs):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)  # a slow disk: the next save comes while this one is still in flight
        try:
            return real_save(step, *args, **kwargs)
        finally:
            order.append(step)
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(store, "_commit", counted_save)
    for step in (1000, 2000, 3000):
        store.save(step, state, {"timestep": step})
    store.wait()
    assert order == [1000, 2000, 3000] and most[0] == 1
    assert store.all_steps() == [2000, 3000]
    assert [store.metadata(step)["timestep"] for step in (2000, 3000)] == [2000, 3000]
    store.close()
    assert CheckpointStore(tmp_path / "ckpt").all_steps() == [2000, 3000]


FULL_DISKS = [OSError(errno.ENOSPC, "No space left on device"),
              ValueError("Error writing local file \"/x/d/abc\": [RESOURCE_EXHAUSTED] ... [os_error_code='28']")]


@pytest.mark.parametrize("failure", FULL_DISKS, ids=["OSError", "tensorstore"])
@pytest.mark.parametrize("surfaces_in", ["save", "wait", "close"])
def test_a_failed_background_save_is_raised_once_naming_its_step(tmp_path, monkeypatch, failure, surfaces_in):
    state = _state()
    store = CheckpointStore(tmp_path / "ckpt")
    real_save = store._commit

    def save_failing_at_2000(step, *args, **kwargs):
        if step == 2000:
            raise failure
        return real_save(step, *args, **kwargs)

    monkeypatch.setattr(store, "_commit", save_failing_at_2000)
    store.save(1000, state, {"timestep": 1000})
    store.save(2000, state, {"timestep": 2000})  # returns: its failure comes later
    assert store.all_steps() == [1000]  # a read waits for it, and leaves its failure for the next write call
    call = {"save": lambda: store.save(3000, state, {"timestep": 3000}), "wait": store.wait, "close": store.close}
    with pytest.raises(WriteFailed, match=r"^could not write checkpoint 2000 \(No space left on device\)$"):
        call[surfaces_in]()
    if surfaces_in != "close":
        store.save(3000, state, {"timestep": 3000})  # once only: the store goes on
        store.close()
    else:
        store.close()  # nothing left to raise
    assert CheckpointStore(tmp_path / "ckpt").all_steps() == ([1000] if surfaces_in == "close" else [1000, 3000])


def test_the_caller_may_change_what_it_saved_as_soon_as_save_returns(tmp_path, monkeypatch):
    state = _state()
    store = CheckpointStore(tmp_path / "ckpt")
    release = _held(store, monkeypatch)
    rollout, evaluations = _rollout(1.0), [{"timestep": 500, "mean": -90.0}]
    store.save(1000, state, {"timestep": 1000, "evaluations": evaluations}, rollout)
    for array in rollout.values():  # the collector reuses its rollout arrays; the loop appends evaluations
        array[...] = 7
    evaluations.append({"timestep": 1500, "mean": -80.0})
    evaluations[0]["mean"] = 0.0
    release.set()
    _, meta, restored = store.restore_run(1000, state, _rollout())
    store.close()
    jax.tree.map(np.testing.assert_array_equal, restored, _rollout(1.0))
    assert meta["evaluations"] == [{"timestep": 500, "mean": -90.0}]


def test_close_leaves_no_thread_running(tmp_path):
    before = set(threading.enumerate())
    store = CheckpointStore(tmp_path / "ckpt", keep=1)
    for step in (1000, 2000, 3000):
        store.save(step, _state(), {"timestep": step})
    store.close()
    assert set(threading.enumerate()) - before == set()
    assert store.all_steps() == [3000]  # what a finished run reads after closing its store


SAVE_UNTIL_KILLED = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from jaxrl_lander.config import make_config
    from jaxrl_lander.core.algos import make_learner
    from jaxrl_lander.storage.checkpoint import CheckpointStore

    state = make_learner(make_config("ppo"), obs_dim=8, action_size=4).init(jax.random.key(0))
    store = CheckpointStore(sys.argv[1])
    step = 0
    while True:
        step += 1000
        store.save(step, state, {"timestep": step}, {"obs": np.full((256, 8, 8), step, np.float32)})
        # committed: a save returns once the one MAX_PENDING before it is
        print(step - 1000 * CheckpointStore.MAX_PENDING, flush=True)
""")


def test_a_kill_during_saves_leaves_only_whole_checkpoints_and_the_latest_resumes(tmp_path):
    directory = tmp_path / "ckpt"
    child = subprocess.Popen([sys.executable, "-c", SAVE_UNTIL_KILLED, str(directory)], stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    committed = [int(child.stdout.readline()) for _ in range(8)][-1]
    time.sleep(0.013)  # into a save: one is in flight nearly all the time
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()

    store = CheckpointStore(directory)
    steps = store.all_steps()
    assert steps == list(range(1000, steps[-1] + 1, 1000)) and steps[-1] >= committed
    template = {"obs": np.zeros((256, 8, 8), np.float32)}
    for step in steps:
        _, meta, rollout = store.restore_run(step, _state(), template)
        assert meta == {"timestep": step} and (rollout["obs"] == step).all()
    resumed = steps[-1] + 1000  # as a resume does: the step the kill may have cut short is saved again
    store.save(resumed, _state(), {"timestep": resumed}, {"obs": np.full((256, 8, 8), resumed, np.float32)})
    store.close()
    assert CheckpointStore(directory).all_steps() == [*steps, resumed]
