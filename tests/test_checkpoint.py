"""Orbax round trips: a restored state and a saved model act exactly as the originals."""

import logging
import sys
import types
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lander import Policy, load_policy
from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.storage.model import ModelSpec, load_model, save_model
from jaxrl_lander.config import make_config
from jaxrl_lander.config.errors import UnreadableModel
from jaxrl_lander.core.policy import sample_action


def _state(seed=0):
    learner = make_learner(make_config("ppo"), obs_dim=8, action_size=4)
    state = learner.init(jax.random.key(seed))
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
    act = jax.jit(partial(sample_action, learner.network))
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


SPEC = ModelSpec(algo="ppo", env_id="LunarLander-v3", seed=1, timestep=1000, obs_dim=8, num_actions=4,
                 hidden_size=64, first_eval_seed=2**31, observation_normalization=None, env_options={})


def test_model_round_trip_and_load_policy(tmp_path):
    learner, state = _state()
    save_model(tmp_path / "ppo_seed1" / "ppo_seed1_model", state.params, SPEC)
    params, spec = load_model(tmp_path / "ppo_seed1" / "ppo_seed1_model")
    assert spec == SPEC
    jax.tree.map(np.testing.assert_array_equal, params, state.params)
    obs = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)
    expected = np.argmax(np.asarray(learner.network.apply(state.params, obs)[0].logits), axis=-1)
    for path in (tmp_path / "ppo_seed1" / "ppo_seed1_model", tmp_path / "ppo_seed1"):  # model, or its experiment
        actions = load_policy(path)(obs)
        assert actions.shape == (64,) and actions.dtype == np.int32
        np.testing.assert_array_equal(actions, expected)
    assert len(set(expected.tolist())) > 1  # perturbed params: not a constant policy
    with pytest.raises(UnreadableModel, match="no trained model in"):
        load_policy(tmp_path)  # a directory that is neither
    (tmp_path / "ppo_seed1").rename(tmp_path / "renamed")  # a copy of an experiment under another name
    np.testing.assert_array_equal(load_policy(tmp_path / "renamed")(obs), expected)
    save_model(tmp_path / "renamed" / "a2c_seed1_model", state.params, SPEC)
    with pytest.raises(UnreadableModel, match="holds 2 models \\(a2c_seed1_model, ppo_seed1_model\\): give the one"):
        load_policy(tmp_path / "renamed")


def test_policy_samples_with_an_explicit_key_or_seed(tmp_path):
    learner, state = _state()
    policy = Policy(learner.network, state.params)
    obs = np.zeros((4000, 8), np.float32)
    sampled = policy(obs, deterministic=False, seed=3)
    assert sampled.shape == (4000,) and sampled.dtype == np.int32
    np.testing.assert_array_equal(sampled, policy(obs, deterministic=False, key=jax.random.key(3)))
    np.testing.assert_array_equal(sampled, policy.sampler(3)(obs))  # a sampler's first draw is the same
    assert len(set(sampled.tolist())) > 1 and len(set(policy(obs).tolist())) == 1  # sampled vs argmax
    assert not np.array_equal(sampled, policy(obs, deterministic=False, seed=4))
    with pytest.raises(ValueError, match="exactly one of key= or seed="):
        policy(obs, deterministic=False)
    np.testing.assert_allclose(policy.value(obs[:2]), learner.network.apply(state.params, obs[:2])[1], rtol=1e-6)


def test_model_spec_must_be_whole(tmp_path):
    learner, state = _state()
    save_model(tmp_path / "x_model", state.params, SPEC)
    spec_file = tmp_path / "x_model" / "policy" / "metadata"
    spec_file.write_text(spec_file.read_text().replace('"first_eval_seed"', '"first_seed"'))
    with pytest.raises(UnreadableModel, match="x_model is unreadable .*first_seed"):
        load_model(tmp_path / "x_model")


def test_restore_into_another_architecture_is_refused(tmp_path):
    _, state = _state()
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1000, state, {"timestep": 1000})
    store.close()
    wider = make_learner(make_config("ppo", {"hidden_size": 32}), obs_dim=8, action_size=4)
    template = wider.init(jax.random.key(0))
    with pytest.raises(ValueError, match="does not match the structure"):
        CheckpointStore(tmp_path / "ckpt").restore(1000, template)


def test_read_failure_echoes_are_dropped_and_nothing_else(monkeypatch, caplog):
    # When orbax fails to read a checkpoint, reads still in flight report "Event loop is closed" as unraisable
    # exceptions, which must not reach stderr after the real error; any other report still must. The command
    # line sets these hooks once for its process. (The end-to-end case, a resume from truncated arrays giving
    # exactly one error line, is in test_cli.py.)
    from jaxrl_lander.cli.main import drop_read_failure_echoes

    seen, printed = [], []
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    monkeypatch.setattr(sys, "excepthook", lambda t, e, tb: printed.append(str(e)))  # reader threads print too
    drop_read_failure_echoes()
    for message in ("Event loop is closed", "something else"):
        sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError(message),
                                                 exc_traceback=None, err_msg=None, object=None))
    assert seen == ["something else"]
    # A read coroutine of orbax's, finalised unawaited with its own error: dropped; anyone else's: kept.
    orbax_read = types.SimpleNamespace(cr_code=types.SimpleNamespace(
        co_filename="/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py"))
    mine = types.SimpleNamespace(cr_code=types.SimpleNamespace(co_filename="/home/me/app.py"))
    for obj, message in ((orbax_read, "Encountered error while reading array index"), (mine, "mine")):
        sys.unraisablehook(types.SimpleNamespace(exc_type=Exception, exc_value=Exception(message),
                                                 exc_traceback=None, err_msg=None, object=obj))
    assert seen == ["something else", "mine"]
    for message in ("Event loop is closed", "something else"):
        sys.excepthook(RuntimeError, RuntimeError(message), None)
    assert printed == ["something else"]
    # A failed read task nobody awaits any more is logged by asyncio: dropped too, other asyncio errors kept.
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for message in ("Task exception was never retrieved\nfuture: <Task finished>", "something else",
                        "_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture finished>"):
            logging.getLogger("asyncio").error(message)
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_reads_leave_the_process_hooks_alone(tmp_path, monkeypatch):
    _, state = _state()
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(1000, state, {"timestep": 1000})
    store.wait()
    hooks = (sys.unraisablehook, sys.excepthook, list(logging.getLogger("asyncio").filters))
    store.restore(1000, state)

    def failing_restore(*args, **kwargs):
        raise ValueError("OUT_OF_RANGE: Error reading")

    monkeypatch.setattr(store._state_handler, "restore", failing_restore)
    with pytest.raises(ValueError, match="OUT_OF_RANGE"):
        store.restore(1000, state)
    store.close()
    assert (sys.unraisablehook, sys.excepthook, logging.getLogger("asyncio").filters) == hooks
