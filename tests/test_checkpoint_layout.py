"""What a periodic checkpoint's `state` item holds on disk: one array of bytes, without OCDBT; it restores exactly,
with and without a pending rollout, refuses another structure, reads with orbax's plain PyTreeCheckpointer, and
checkpoints of the earlier layout (per-dtype arrays, the key and the rollout, under OCDBT) still restore."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxrl_lander.config import make_config
from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.storage.checkpoint import CheckpointStore, _per_dtype_tree


def _state(seed=0, hidden_size=64):
    learner = make_learner(make_config("ppo", {"hidden_size": hidden_size}), obs_dim=8, action_size=4)
    state = learner.init(jax.random.key(seed))
    # Distinct values in every leaf, the optimiser's counts too: a shuffled or shifted split cannot pass.
    bump = lambda x: x + (jnp.arange(x.size).reshape(x.shape) % 7 + seed).astype(x.dtype)  # noqa: E731
    return state.replace(params=jax.tree.map(bump, state.params), opt_state=jax.tree.map(bump, state.opt_state))


def _rollout(value=0.0, n=4):
    return {"obs": np.arange(n * 2 * 8, dtype=np.float32).reshape(n, 2, 8) + value,
            "actions": np.arange(n * 2, dtype=np.int32).reshape(n, 2) + int(value),
            "rewards": np.linspace(-1, 1, n * 2).reshape(n, 2).astype(np.float32),
            "next_obs": np.full((2, 8), value, np.float32)}


def _assert_same_state(restored, state):
    leaves, expected = jax.tree.leaves((restored.params, restored.opt_state)), jax.tree.leaves(
        (state.params, state.opt_state))
    assert [(x.dtype, x.shape) for x in leaves] == [(x.dtype, x.shape) for x in expected]
    jax.tree.map(np.testing.assert_array_equal, leaves, expected)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(state.key))


def _assert_same_rollout(restored, rollout):
    assert restored is not None and set(restored) == set(rollout)
    for name, array in rollout.items():
        assert restored[name].dtype == array.dtype and restored[name].shape == array.shape, name
        np.testing.assert_array_equal(restored[name], array)


def test_state_item_is_one_array_of_bytes_without_ocdbt(tmp_path):
    state, rollout = _state(), _rollout(2.0)
    store = CheckpointStore(tmp_path)
    store.save(1000, state, {"timestep": 1000}, rollout)
    store.close()
    item = tmp_path / "1000" / "state"
    assert not list(item.rglob("manifest.ocdbt")) and not list(item.rglob("d"))  # no OCDBT database
    assert sorted(p.name for p in item.iterdir() if p.is_dir()) == ["bytes"]  # one array
    leaves = jax.tree.leaves((state.params, state.opt_state))
    state_bytes = sum(x.nbytes for x in leaves) + jax.random.key_data(state.key).nbytes
    rollout_bytes = sum(x.nbytes for x in rollout.values())
    # What users and our tools read it with: orbax's plain checkpointer, no template.
    tree = ocp.PyTreeCheckpointer().restore(item)
    assert set(tree) == {"bytes"} and tree["bytes"].dtype == np.uint8
    data = np.asarray(tree["bytes"])
    assert data.size == 16 + state_bytes + rollout_bytes
    assert data[:16].view("<u8").tolist() == [state_bytes, rollout_bytes]
    np.testing.assert_array_equal(data[16:16 + leaves[0].nbytes].view(leaves[0].dtype),
                                  np.asarray(leaves[0]).ravel())  # the first leaf's raw bytes, first
    last = jax.tree.leaves(rollout)[-1]  # the rollout's last array in tree order (sorted names), last
    np.testing.assert_array_equal(data[-last.nbytes:].view(last.dtype), last.ravel())


def test_round_trip_with_and_without_a_pending_rollout(tmp_path):
    state, other = _state(seed=1), _state(seed=2)
    store = CheckpointStore(tmp_path)
    store.save(1000, state, {"timestep": 1000}, _rollout(3.0))
    store.save(2000, other, {"timestep": 2000})
    store.close()
    store, template = CheckpointStore(tmp_path), _state(seed=5)
    restored, meta, pending = store.restore_run(1000, template, _rollout())
    assert meta == {"timestep": 1000}
    _assert_same_state(restored, state)
    _assert_same_rollout(pending, _rollout(3.0))
    pending["obs"][0] = -1  # the caller's own arrays
    restored, meta, pending = store.restore_run(2000, template, _rollout())
    assert meta == {"timestep": 2000} and pending is None
    _assert_same_state(restored, other)
    for step, expected in ((1000, state), (2000, other)):  # without a rollout template: the state alone
        restored, meta = store.restore(step, template)
        assert meta == {"timestep": step}
        _assert_same_state(restored, expected)
    store.close()


@pytest.mark.parametrize("layout", ["bytes", "per_dtype"])
def test_another_structure_is_refused(tmp_path, layout):
    state = _state()
    if layout == "bytes":
        store = CheckpointStore(tmp_path)
        store.save(1000, state, {"timestep": 1000}, _rollout())
        store.save(2000, state, {"timestep": 2000})
        store.close()
    else:
        for step, rollout in ((1000, _rollout()), (2000, None)):
            _save_per_dtype(tmp_path, step, state, rollout)
    store, match = CheckpointStore(tmp_path), "^checkpoint does not match the structure of this config's train state$"
    for step in (1000, 2000):
        for template in (_state(hidden_size=32), _state(hidden_size=128)):  # fewer bytes, more bytes
            with pytest.raises(ValueError, match=match):
                store.restore(step, template)
            with pytest.raises(ValueError, match=match):
                store.restore_run(step, template, _rollout())
    with pytest.raises(ValueError, match=match):  # the state's, with a rollout of another size
        store.restore_run(1000, state, _rollout(n=5))
    store.close()


def _save_per_dtype(directory, step, state, rollout):
    """A checkpoint as the store wrote them before the single array: per-dtype arrays, the key and the rollout
    under `state`, with orbax's default (OCDBT) handler."""
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(directory, options=options, item_names=("state", "metadata")) as manager:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_per_dtype_tree(state, rollout)),
                                                   metadata=ocp.args.JsonSave({"timestep": step})))


def test_checkpoints_of_the_earlier_layout_still_restore(tmp_path):
    state, other = _state(seed=1), _state(seed=2)
    _save_per_dtype(tmp_path, 1000, state, _rollout(4.0))
    _save_per_dtype(tmp_path, 2000, other, None)
    tree = ocp.PyTreeCheckpointer().restore(tmp_path / "1000" / "state")
    assert set(tree) == {"state", "key", "rollout"} and set(tree["state"]) == {"float32", "int32"}
    assert list((tmp_path / "1000" / "state").rglob("manifest.ocdbt"))  # written with OCDBT, as they were
    store, template = CheckpointStore(tmp_path), _state(seed=5)
    restored, meta, pending = store.restore_run(1000, template, _rollout())
    assert meta == {"timestep": 1000}
    _assert_same_state(restored, state)
    _assert_same_rollout(pending, _rollout(4.0))
    restored, meta, pending = store.restore_run(2000, template, _rollout())
    assert meta == {"timestep": 2000} and pending is None
    _assert_same_state(restored, other)
    _assert_same_state(store.restore(1000, template)[0], state)
    # A store saving beside them writes the new layout, and reads both.
    store.save(3000, other, {"timestep": 3000}, _rollout(5.0))
    assert store.all_steps() == [1000, 2000, 3000]
    restored, _, pending = store.restore_run(3000, template, _rollout())
    _assert_same_state(restored, other)
    _assert_same_rollout(pending, _rollout(5.0))
    _assert_same_state(store.restore(1000, template)[0], state)
    store.close()
    assert set(ocp.PyTreeCheckpointer().restore(tmp_path / "3000" / "state")) == {"bytes"}
