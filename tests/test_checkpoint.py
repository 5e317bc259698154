"""Orbax round trips: a restored state and a saved model act exactly as the originals."""

import logging
import sys
import types
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lander import load_policy
from jaxrl_lander.algos.common import init_state, make_learner
from jaxrl_lander.checkpoint import CheckpointStore, load_model, save_model
from jaxrl_lander.config import make_config
from jaxrl_lander.evaluate import greedy_policy
from jaxrl_lander.policy import sample_action


def _state(seed=0):
    learner = make_learner(make_config("ppo"), num_actions=4)
    state = init_state(policy=learner.policy, tx=learner.tx, key=jax.random.key(seed), obs_dim=8)
    # Perturb so the test cannot pass on freshly initialised (deterministic) parameters alone.
    state = state.replace(params=jax.tree.map(lambda p: p + 0.01 * jnp.sin(jnp.arange(p.size).reshape(p.shape)),
                                              state.params))
    return learner, state


def test_checkpoint_round_trip_gives_identical_actions(tmp_path):
    learner, state = _state()
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1000, state, {"timestep": 1000, "note": "x"})
    store.save(2000, state.replace(key=jax.random.key(9)), {"timestep": 2000})
    store.close()

    reopened = CheckpointStore(tmp_path / "ckpt")
    assert reopened.all_steps() == [1000, 2000] and reopened.latest_step() == 2000
    template = _state(seed=5)[1]  # another state of the same structure
    restored, meta = reopened.restore(1000, template)
    reopened.close()
    assert meta == {"timestep": 1000, "note": "x"}
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, restored.opt_state, state.opt_state)
    obs = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    act = jax.jit(partial(sample_action, learner.policy))
    a1, k1 = act(state.params, obs, state.key)
    a2, k2 = act(restored.params, obs, restored.key)  # same PRNG key restored: same sampled actions
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(jax.random.key_data(k1), jax.random.key_data(k2))


def test_keep_checkpoints_retains_newest(tmp_path):
    _, state = _state()
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    for step in (1000, 2000, 3000):
        store.save(step, state, {"timestep": step})
    store.close()
    assert CheckpointStore(tmp_path / "ckpt").all_steps() == [2000, 3000]


def test_model_round_trip_and_load_policy(tmp_path):
    learner, state = _state()
    save_model(tmp_path / "x_model", state.params, {"num_actions": 4, "hidden_size": 64, "seed": 1,
                                                  "env_id": "LunarLander-v3"})
    params, spec = load_model(tmp_path / "x_model")
    assert spec["num_actions"] == 4
    jax.tree.map(np.testing.assert_array_equal, params, state.params)
    obs = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)
    expected = greedy_policy(learner.policy, state.params)(obs)
    for path in (tmp_path / "x_model", tmp_path):  # a model dir, or the experiment dir holding it
        actions = load_policy(path)(obs)
        assert actions.shape == (64,) and actions.dtype == np.int32
        np.testing.assert_array_equal(actions, expected)
    assert len(set(expected.tolist())) > 1  # perturbed params: not a constant policy


def test_restore_into_another_architecture_is_refused(tmp_path):
    _, state = _state()
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1000, state, {"timestep": 1000})
    store.close()
    wider = make_learner(make_config("ppo", {"hidden_size": 32}), num_actions=4)
    template = init_state(policy=wider.policy, tx=wider.tx, key=jax.random.key(0), obs_dim=8)
    with pytest.raises(ValueError, match="does not match the structure"):
        CheckpointStore(tmp_path / "ckpt").restore(1000, template)


def test_failed_restore_silences_only_the_closed_loop_reports(tmp_path, monkeypatch, caplog):
    # When orbax fails to read a checkpoint, reads still in flight report "Event loop is closed" as unraisable
    # exceptions, which must not reach stderr after the real error; any other report still must. (The end-to-end
    # case, a resume from truncated arrays giving exactly one error line, is in test_cli.py.)
    _, state = _state()
    seen, printed = [], []
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])  # the filter a failure leaves goes after
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    monkeypatch.setattr(sys, "excepthook", lambda t, e, tb: printed.append(str(e)))  # reader threads print too
    store = CheckpointStore(tmp_path / "ckpt")

    def failing_restore(*args, **kwargs):
        raise ValueError("OUT_OF_RANGE: Error reading")

    monkeypatch.setattr(store.manager, "restore", failing_restore)
    with pytest.raises(ValueError, match="OUT_OF_RANGE"):
        store.restore(1000, state)
    for message in ("Event loop is closed", "something else"):
        sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError(message),
                                                 exc_traceback=None, err_msg=None, object=None))
    assert seen == ["something else"]
    for message in ("Event loop is closed", "something else"):
        sys.excepthook(RuntimeError, RuntimeError(message), None)
    assert printed == ["something else"]
    # A failed read task nobody awaits any more is logged by asyncio: dropped too, other asyncio errors kept.
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for message in ("Task exception was never retrieved\nfuture: <Task finished>", "something else"):
            logging.getLogger("asyncio").error(message)
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_successful_read_restores_the_hooks(tmp_path):
    _, state = _state()
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1000, state, {"timestep": 1000})
    store.wait()
    hooks = (sys.unraisablehook, sys.excepthook, list(logging.getLogger("asyncio").filters))
    store.restore(1000, state)
    store.close()
    assert (sys.unraisablehook, sys.excepthook, logging.getLogger("asyncio").filters) == hooks
