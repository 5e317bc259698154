"""The compiled collector's learning targets (envpool resets on the step after a done), against hand-computed
values and against the gymnasium path's targets on the same transitions; and short real runs on envpool (slow, and
skipped where envpool is not installed)."""

import chex
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from helpers import CountingHooks, load_json, run_cli, template_state, train_run
from jaxrl_lander.core.algos.base import gae
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.training.compiled import next_step_targets
from jaxrl_lander.config import make_config
from jaxrl_lander.envs.envpool import episode_ends
from jaxrl_lander.envs.gymnasium import bootstrap_truncated

GAMMA = 0.9


class TargetsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_built_sequence(self):
        # One env: a step, a time-limit cut, the reset-only step after it, a crash, its reset, a step.
        rewards = jnp.array([[1.0], [2.0], [0.0], [-100.0], [0.0], [3.0]])
        terminated = jnp.array([[0], [0], [0], [1], [0], [0]], bool)
        truncated = jnp.array([[0], [1], [0], [0], [0], [0]], bool)
        resets = jnp.array([[0], [0], [1], [0], [1], [0]], bool)
        next_values = jnp.array([[5.0], [10.0], [7.0], [8.0], [6.0], [4.0]])
        targets = self.variant(next_step_targets)(rewards, terminated, truncated, resets, next_values, GAMMA, 0.5)
        out_rewards, dones, valid = map(np.asarray, targets)
        # Only the cut gets gamma * v(its true last observation); a crash and a reset get nothing added.
        np.testing.assert_allclose(out_rewards[:, 0], [0.5, 1.0 + GAMMA * 10.0, 0.0, -50.0, 0.0, 1.5], rtol=1e-6)
        np.testing.assert_array_equal(dones[:, 0], [0, 1, 1, 1, 1, 0])
        np.testing.assert_array_equal(valid[:, 0], [1, 1, 0, 1, 0, 1])
        # GAE (lambda 1): no return crosses an episode end or a reset row.
        values = jnp.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
        advantages, _ = gae(jnp.asarray(out_rewards), values, jnp.asarray(dones), jnp.array([4.0]), GAMMA, 1.0)
        expected_0 = 0.5 + GAMMA * (1.0 + GAMMA * 10.0) - 1.0
        expected_5 = 1.5 + GAMMA * 4.0 - 6.0
        np.testing.assert_allclose(np.asarray(advantages)[[0, 1, 3, 5], 0],
                                   [expected_0, 1.0 + GAMMA * 10.0 - 2.0, -50.0 - 4.0, expected_5], rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_a_crash_at_the_time_limit_is_a_termination(self):
        rewards = jnp.array([-100.0, 100.0, -99.5, -100.0, 3.0])
        terminated = jnp.array([0, 0, 0, 1, 0], bool)
        truncated = jnp.array([1, 1, 1, 0, 0], bool)
        term, trunc = self.variant(episode_ends)(rewards, terminated, truncated)
        np.testing.assert_array_equal(np.asarray(term), [1, 1, 0, 1, 0])
        np.testing.assert_array_equal(np.asarray(trunc), [0, 0, 1, 0, 0])


def _play(mode: AutoresetMode, steps: int, num_envs: int, policy, value):
    """Raw steps of LunarLander (time limit 40) in a gymnasium vector env with the given autoreset mode."""
    envs = gym.make_vec("LunarLander-v3", num_envs=num_envs, vectorization_mode="sync", max_episode_steps=40,
                        vector_kwargs={"autoreset_mode": mode})
    obs, _ = envs.reset(seed=7)
    rows = []
    for _ in range(steps):
        actions = policy(obs)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        rows.append((obs, actions, rewards, terminated, truncated, info, next_obs))
        obs = next_obs
    envs.close()
    return rows


def test_targets_match_the_gymnasium_path_on_the_same_transitions():
    """The same episodes played with next-step autoreset (as envpool) and same-step autoreset (the host path):
    the compiled path's targets, with the reset-only rows dropped, are the host path's targets, and so are the
    GAE advantages of every episode that ends in the window."""
    rng = np.random.default_rng(0)
    weights, value_weights = rng.normal(size=(8, 4)), rng.normal(size=8)
    policy = lambda obs: np.argmax(obs @ weights, axis=1)  # noqa: E731  deterministic: same obs, same action
    value = lambda obs: (obs @ value_weights).astype(np.float32)  # noqa: E731
    num_envs, steps = 3, 150

    same = _play(AutoresetMode.SAME_STEP, steps, num_envs, policy, value)
    host_rewards = np.stack([bootstrap_truncated(r.astype(np.float64), te, tr, info, value, GAMMA)
                             for _, _, r, te, tr, info, _ in same]).astype(np.float32)
    host_dones = np.stack([np.logical_or(te, tr) for _, _, _, te, tr, _, _ in same]).astype(np.float32)
    host_obs = np.stack([o for o, *_ in same])

    nxt = _play(AutoresetMode.NEXT_STEP, steps, num_envs, policy, value)
    resets = np.zeros((steps, num_envs), bool)
    for t in range(1, steps):
        resets[t] = np.logical_or(nxt[t - 1][3], nxt[t - 1][4])
    stack = lambda i: np.stack([row[i] for row in nxt])  # noqa: E731
    rewards, dones, valid = map(np.asarray, next_step_targets(
        jnp.asarray(stack(2), jnp.float32), jnp.asarray(stack(3)), jnp.asarray(stack(4)), jnp.asarray(resets),
        jnp.asarray(np.stack([value(o) for o in stack(6)])), GAMMA, 1.0))
    assert host_dones.sum() >= 2 * num_envs and (1 - valid).sum() >= num_envs  # episodes did end, resets did occur

    for env in range(num_envs):
        keep = valid[:, env] == 1
        n = int(keep.sum())  # the next-step stream has fewer real transitions in the same number of steps
        np.testing.assert_array_equal(stack(0)[keep, env], host_obs[:n, env])
        np.testing.assert_allclose(rewards[keep, env], host_rewards[:n, env], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(dones[keep, env], host_dones[:n, env])
        # GAE over each stream up to its last episode end in the shared window
        last = int(np.flatnonzero(host_dones[:n, env])[-1]) + 1
        host_values = jnp.asarray(value(host_obs[:last, env])[:, None])
        host_adv, _ = gae(jnp.asarray(host_rewards[:last, env:env + 1]), host_values,
                          jnp.asarray(host_dones[:last, env:env + 1]), jnp.zeros(1), GAMMA, 0.95)
        rows = np.flatnonzero(keep)[:last]
        span = slice(0, rows[-1] + 1)
        adv, _ = gae(jnp.asarray(rewards[span, env:env + 1]), jnp.asarray(value(stack(0)[span, env])[:, None]),
                     jnp.asarray(dones[span, env:env + 1]), jnp.zeros(1), GAMMA, 0.95)
        np.testing.assert_allclose(np.asarray(adv)[rows, 0], np.asarray(host_adv)[:, 0], rtol=1e-4, atol=1e-3)


# 8 envs x 64 steps = 512 transitions per update; checkpoints every 128 steps fall inside each rollout.
ENVPOOL = {"env_backend": "envpool", "n_steps": 64, "batch_size": 64, "n_epochs": 2, "checkpoint_interval": 128,
           "eval_episodes": 2, "eval_interval": 1024, "eval_interval_episodes": 2}


def _params(store: CheckpointStore, step: int, config) -> np.ndarray:
    state, _ = store.restore(step, template_state(config))
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(state.params)])


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_envpool_run_checkpoints_inside_a_rollout_and_resumes(tmp_path):
    whole = train_run(make_config("ppo", {**ENVPOOL, "total_timesteps": 2_000}), tmp_path / "whole")
    results = whole.results
    assert results.status == "completed" and results.timestep == 2_000
    assert results.updates == 3  # 2,000 steps: 3 whole rollouts of 512, then 464 steps played and kept
    assert results.hyperparameters["env_backend"] == "envpool"
    assert results.success_criteria["SC-005"]["passed"]
    assert [e["timestep"] for e in results.evaluations_during_training] == [1024]  # evaluations play gymnasium's env
    store = CheckpointStore(whole.paths.checkpoints)
    try:
        assert store.all_steps() == [*range(128, 2_000, 128), 2_000]
        # Inside a rollout: the parameters that played it; at its end: the updated ones.
        params = {step: _params(store, step, whole.config) for step in (128, 384, 512, 640, 896)}
        np.testing.assert_array_equal(params[128], params[384])
        assert not np.array_equal(params[384], params[512])
        np.testing.assert_array_equal(params[640], params[896])
        meta = store.metadata(2_000)
        assert meta["rollout_filled"] == (2_000 - 3 * 512) // 8
    finally:
        store.close()

    records = _records(whole.paths.metrics)
    # Resume the kept partial rollout with more steps: updates at the same steps as an uninterrupted run.
    longer = make_config("ppo", {**ENVPOOL, "total_timesteps": 3_000})
    resumed = train_run(longer, tmp_path / "whole", resume=True).results
    straight_run = train_run(longer, tmp_path / "straight")
    straight = straight_run.results
    assert resumed.status == "completed" and resumed.resumed_from_timestep == 2_000
    assert resumed.updates == straight.updates == 5
    # the same grid, plus the first run's last checkpoint
    assert set(resumed.artifacts["checkpoints"]) - set(straight.artifacts["checkpoints"]) == {"checkpoints/2000"}
    assert set(straight.artifacts["checkpoints"]) <= set(resumed.artifacts["checkpoints"])
    # The same seed, the same run: the longer one's first 2,000 steps are the shorter one's.
    assert len(records) == 20 and _records(straight_run.paths.metrics)[:20] == records


def _records(metrics_json) -> list:
    records = load_json(metrics_json)["records"]
    return [{k: v for k, v in r.items() if k not in ("wall_time", "timestamp")} for r in records]


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_envpool_run_killed_inside_a_rollout_resumes_to_the_same_updates(tmp_path):
    """SIGKILL while a checkpoint inside the first rollout is being committed; --resume finishes with the
    uninterrupted run's checkpoint grid and update count (3 rollouts of 512 in 2,000 steps), its results valid."""
    (tmp_path / "envpool.toml").write_text("".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in ENVPOOL.items()))
    train = ["train", "--algo", "ppo", "--steps", "2000", "--config", "envpool.toml", "--quiet"]
    killed = run_cli(*train, cwd=tmp_path, point="checkpoint:384")  # inside the first rollout
    assert killed.returncode == -9, killed.stderr
    exp = tmp_path / "results" / "experiments" / "ppo_seed42"
    assert CheckpointStore(exp / "checkpoints").latest_step() in (128, 256)
    resumed = run_cli(*train, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    results = load_json(exp / "ppo_seed42_results.json")
    assert results["status"] == "completed" and results["updates"] == 3
    assert results["artifacts"]["checkpoints"] == [f"checkpoints/{s}" for s in [*range(128, 2_000, 128), 2_000]]
    assert results["success_criteria"]["SC-005"]["passed"]


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_a_stop_inside_a_compiled_rollout_stops_at_the_step_reached():
    """The rollout is played whole, but a stop asked for during it ends the run at its next due step, before the
    update: the checkpoints after the stop are not made (an --overwrite stopped there keeps the old run)."""

    from jaxrl_lander.core.algos import make_learner
    from jaxrl_lander.training.compiled import CompiledCollector
    from jaxrl_lander.training.loop import Progress, train_loop
    from jaxrl_lander.outputs import Outputs
    from jaxrl_lander.storage.metrics import MetricsRecorder
    from jaxrl_lander.training.runtime import Devices

    config = make_config("ppo", {**ENVPOOL, "total_timesteps": 2_000})
    learner = make_learner(config, obs_dim=8, action_size=4)
    collector = CompiledCollector(config, learner, Devices.resolve())
    collector.start(env_seeds=[0])
    progress = Progress()
    hooks = CountingHooks(collector, [progress])
    recorder = MetricsRecorder("x", "ppo", config.env_id, 0, config.recording_interval)
    result = train_loop(config, learner, collector, learner.init(jax.random.key(0)), [progress],
                        [Outputs(recorder, [])], hooks, lambda: len(hooks.checkpoints) >= 2)
    collector.close()
    assert hooks.checkpoints == [128, 256] and progress.timestep == 256 and progress.updates == 0
    assert result.failure is None and [r["timestep"] for r in recorder.records] == [104, 200]
    arrays, filled = collector.pending(256)  # what the stop checkpoint keeps: the rollout's first 32 rows
    assert filled == 32 and arrays["valid"][:32].any() and not arrays["obs"][32:].any()


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_the_update_inside_envpools_program_or_apart_trains_the_same_run(tmp_path, monkeypatch):
    """Where the update goes changes the speed only: 100 A2C updates with the update inside the program (25
    rollouts a call) and as a program of its own, bit for bit the same checkpoints, episodes and records."""
    from jaxrl_lander.training import compiled

    placed = []
    prepare = compiled.CompiledCollector.prepare
    monkeypatch.setattr(compiled.CompiledCollector, "prepare",
                        lambda self, state: (placed.append(self.update_inside), prepare(self, state))[1])
    config = make_config("a2c", {"env_backend": "envpool", "total_timesteps": 4_000, "checkpoint_interval": 1_000,
                                 "eval_episodes": 2})
    runs = {}
    for inside, fuse_from in ((True, 0), (False, 10**9)):
        monkeypatch.setattr(compiled, "UPDATES_TO_FUSE", fuse_from)
        runs[inside] = train_run(config, tmp_path / str(inside))
    assert placed == [True, False]
    inside, apart = runs[True], runs[False]
    assert inside.results.updates == apart.results.updates == 100
    untimed = [{k: v for k, v in run.results.evaluation.items() if k != "seconds"} for run in (inside, apart)]
    assert untimed[0] == untimed[1]
    metrics = [load_json(run.paths.metrics) for run in (inside, apart)]
    assert metrics[0]["episodes"] == metrics[1]["episodes"] and len(metrics[0]["episodes"]) > 0
    assert _records(inside.paths.metrics) == _records(apart.paths.metrics)
    stores = [CheckpointStore(run.paths.checkpoints) for run in (inside, apart)]
    try:
        assert stores[0].all_steps() == stores[1].all_steps() == [1_000, 2_000, 3_000, 4_000]
        for step in (1_000, 4_000):
            np.testing.assert_array_equal(_params(stores[0], step, config), _params(stores[1], step, config))
        assert not np.array_equal(_params(stores[0], 1_000, config), _params(stores[0], 4_000, config))
    finally:
        for store in stores:
            store.close()


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_a_stop_far_from_any_due_point_waits_for_one_program_call_at_most(monkeypatch):
    """Without a checkpoint or evaluation for a long way, a program call still ends every MAX_STEPS_PER_CALL env
    steps, where the loop sees a stop: here after the first call's 10 rollouts of 40 steps."""
    from jaxrl_lander.core.algos import make_learner
    from jaxrl_lander.outputs import Outputs
    from jaxrl_lander.storage.metrics import MetricsRecorder
    from jaxrl_lander.training import compiled
    from jaxrl_lander.training.loop import Progress, train_loop
    from jaxrl_lander.training.runtime import Devices

    monkeypatch.setattr(compiled, "MAX_STEPS_PER_CALL", 400)
    config = make_config("a2c", {"env_backend": "envpool", "total_timesteps": 4_000, "checkpoint_interval": 10**9})
    learner = make_learner(config, obs_dim=8, action_size=4)
    collector = compiled.CompiledCollector(config, learner, Devices.resolve(), update_inside=True)
    assert collector.length == 10
    collector.start(env_seeds=[0])
    state = learner.init(jax.random.key(0))
    collector.prepare(state)
    progress, calls = Progress(), []
    advance = collector.advance
    monkeypatch.setattr(collector, "advance", lambda *args: (calls.append(args[1]), advance(*args))[1])
    hooks = CountingHooks(collector, [progress])
    recorder = MetricsRecorder("x", "a2c", config.env_id, 0, config.recording_interval)
    result = train_loop(config, learner, collector, state, [progress], [Outputs(recorder, [])], hooks,
                        lambda: len(calls) >= 1)
    collector.close()
    assert calls == [0] and progress.timestep == 400 and progress.updates == 10 and result.failure is None
    assert hooks.checkpoints == [] and [r["timestep"] for r in recorder.records] == [104, 200, 304, 400]
