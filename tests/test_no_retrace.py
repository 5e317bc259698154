"""The jitted act and update compile once and never retrace: over real LunarLander rollouts, and over a whole
run of the training loop with its checkpoints, records and evaluations (A2C on gymnasium's env in the fast tier,
the others slow; envpool's skipped where it is not installed)."""

from functools import partial

import chex
import jax
import numpy as np
import pytest
from helpers import CountingHooks

from jaxrl_lander.core.algos import make_learner
from jaxrl_lander.training.collect import HostCollector, RolloutBuffer
from jaxrl_lander.training.compiled import CompiledCollector
from jaxrl_lander.config import make_config
from jaxrl_lander.envs.gymnasium import make_vector_env, step_envs
from jaxrl_lander.training.loop import Progress, train_loop
from jaxrl_lander.outputs import Outputs
from jaxrl_lander.storage.metrics import MetricsRecorder
from jaxrl_lander.core.policy import sample_action, state_value
from jaxrl_lander.training.runtime import Devices


@pytest.mark.slow
@pytest.mark.parametrize("algo,n_steps", [("ppo", 16), ("a2c", 5)])
def test_act_and_update_trace_once(algo, n_steps):
    chex.clear_trace_counter()
    config = make_config(algo, {"num_envs": 4, "n_steps": n_steps, "batch_size": 16} if algo == "ppo"
                         else {"num_envs": 4})
    learner = make_learner(config, obs_dim=8, action_size=4, wrap=partial(chex.assert_max_traces, n=1))

    def act_fn(params, obs, key):
        return sample_action(learner.network, params, obs, key)

    act = jax.jit(chex.assert_max_traces(act_fn, n=1))
    value = jax.jit(partial(state_value, learner.network))
    state = learner.init(jax.random.key(0))
    envs = make_vector_env("LunarLander-v3", config.num_envs)
    obs, _ = envs.reset(seed=0)
    buffer = RolloutBuffer(config.n_steps, config.num_envs, 8)
    key = state.key
    losses = []
    for _ in range(3):
        for _ in range(config.n_steps):
            actions, key = act(state.params, obs, key)
            out = step_envs(envs, np.asarray(actions), lambda o: value(state.params, o), config.gamma)
            buffer.add(obs, np.asarray(actions), out.rewards, out.dones)
            obs = out.obs
        state, metrics = learner.update(state.replace(key=key), buffer.rollout(obs))
        key = state.key
        losses.append(float(metrics["loss"]))
    envs.close()
    assert len(set(losses)) == 3 and all(np.isfinite(losses))  # three real, different updates ran


ENVPOOL = pytest.mark.needs("envpool")


@pytest.mark.parametrize("algo,backend", [
    pytest.param("ppo", "gymnasium", marks=pytest.mark.slow),
    pytest.param("ppo", "envpool", marks=[pytest.mark.slow, ENVPOOL]),
    ("a2c", "gymnasium"),  # the fast tier's whole run of the loop
    pytest.param("a2c", "envpool", marks=[pytest.mark.slow, ENVPOOL]),
    pytest.param("a2c", "envpool-fused", marks=[pytest.mark.slow, ENVPOOL]),
])
def test_act_and_update_compiled_once_over_a_whole_loop(algo, backend):
    """Four PPO updates (or 51 A2C updates), checkpoints inside rollouts, records and evaluations: each program
    compiled once, at the same steps on either backend, with the update inside envpool's program or not."""
    fused = backend == "envpool-fused"
    backend = backend.removesuffix("-fused")
    small = {"n_steps": 64} if algo == "ppo" else {}
    config = make_config(algo, {"total_timesteps": 2048, "checkpoint_interval": 500, "eval_interval": 700,
                                "env_backend": backend, **small})
    learner = make_learner(config, obs_dim=8, action_size=4)
    devices = Devices.resolve()
    if backend == "envpool":
        collector = CompiledCollector(config, learner, devices, update_inside=fused)
    else:
        collector = HostCollector(make_vector_env(config.env_id, config.num_envs), learner, config, devices)
    state = jax.device_put(learner.init(jax.random.key(0)), devices.update)  # committed, as the run's is
    collector.start(env_seeds=[0])
    collector.prepare(state)
    progress = Progress()
    hooks = CountingHooks(collector, [progress])
    recorder = MetricsRecorder("x", algo, config.env_id, 0, config.recording_interval)
    result = train_loop(config, learner, collector, state, [progress], [Outputs(recorder, [])], hooks, lambda: False)
    collector.close()
    assert result.failure is None and progress.timestep == 2048
    assert progress.updates == 2048 // config.rollout_size
    assert hooks.checkpoints == [504, 1000, 1504, 2000, 2048] and hooks.evaluations == 2
    assert [e["timestep"] for e in progress.evaluations] == [704, 1400]  # the first vector step past each
    assert len(recorder.records) == 2048 // 100
    if backend == "envpool":  # its program compiled ahead (a call of another signature would raise), for the
        # stretches of whole rollouts, the one after a due point inside a rollout and the tail cut by total_timesteps
        assert isinstance(collector.program, jax.stages.Compiled)
        assert learner.update.func._cache_size() == (0 if collector.update_inside else 1)
        assert collector.update_inside == fused
    else:
        assert learner.update.func._cache_size() == 1
        assert collector.act._cache_size() == 1 and collector.value._cache_size() <= 1
