"""Vectorised agents: the agent axis (hand-built), the traced step size, evaluation of stacked agents, the
refusals of a vectorised sweep, and short real runs (slow): one agent learns what a standalone run learns, a sweep
writes every seed as a standalone run and repeats itself, two devices give what one gives, an agent that diverges
fails alone, kills and stops resume. What trains or checks agents' envs needs envpool, and is skipped without it."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import child_env, cli_command, experiment_paths

from jaxrl_lander.training.agents import _by_agent, agent_of, on_host, stack
from jaxrl_lander.training.run import train_agents
from jaxrl_lander.core.algos import ALGORITHMS, make_learner
from jaxrl_lander.core.algos.base import Rollout
from jaxrl_lander.training.compiled import agents_act, agents_value
from jaxrl_lander.config import EnvShape, make_config
from jaxrl_lander.config.errors import ConfigError
from jaxrl_lander.envs.gymnasium import EnvChoice
from jaxrl_lander.training.evaluate import Policy, evaluate, evaluate_agents
from jaxrl_lander.storage.files import ExperimentPaths, read_json
from jaxrl_lander.core.policy import sample_action, state_value
from jaxrl_lander.config.variants import VARYING, check_agents, sweep_variants

HERE = Path(__file__).parent
# Short envpool runs: one PPO update every 256 env steps, a checkpoint every 128.
TINY = {"env_backend": "envpool", "n_steps": 32, "num_envs": 8, "batch_size": 64, "n_epochs": 2,
        "checkpoint_interval": 128, "eval_episodes": 2, "recording_interval": 64}
TINY_TOML = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items()) + "\n"


def tiny(seed: int = 0, steps: int = 512, **overrides):
    return make_config("ppo", {**TINY, "seed": seed, "total_timesteps": steps, **overrides})


def test_a_rollout_of_all_agents_splits_into_each_agents_columns():
    t, agents, b = 3, 2, 4
    obs = np.arange(t * agents * b * 2, dtype=np.float32).reshape(t, agents * b, 2)
    flat = np.arange(t * agents * b, dtype=np.float32).reshape(t, agents * b)
    last = np.arange(agents * b * 2, dtype=np.float32).reshape(agents * b, 2)
    split = _by_agent(Rollout(obs, flat.astype(np.int32), flat, flat, last, flat), agents)
    chex.assert_shape([split.obs, split.last_obs], [(agents, t, b, 2), (agents, b, 2)])
    for i in range(agents):
        np.testing.assert_array_equal(split.obs[i], obs[:, i * b:(i + 1) * b])
        np.testing.assert_array_equal(split.rewards[i], flat[:, i * b:(i + 1) * b])
        np.testing.assert_array_equal(split.valid[i], flat[:, i * b:(i + 1) * b])
        np.testing.assert_array_equal(split.last_obs[i], last[i * b:(i + 1) * b])


class TestStackedAgents(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_act_and_value_as_each_would_alone(self):
        learner = make_learner(make_config("ppo", {}), obs_dim=8, action_size=4)
        states = [learner.init(jax.random.key(seed)) for seed in (3, 4)]
        params, keys = stack([s.params for s in states]), jnp.stack([s.key for s in states])
        obs = jax.random.normal(jax.random.key(0), (2 * 5, 8))
        actions, next_keys = self.variant(lambda p, o, k: agents_act(learner.network, 2, p, o, k))(params, obs, keys)
        values = self.variant(lambda p, o: agents_value(learner.network, 2, p, o))(params, obs[None].repeat(3, 0))
        chex.assert_shape([actions, values], [(10,), (3, 10)])
        for i, state in enumerate(states):
            alone, key = sample_action(learner.network, state.params, obs[5 * i:5 * (i + 1)], state.key)
            np.testing.assert_array_equal(actions[5 * i:5 * (i + 1)], alone)
            np.testing.assert_array_equal(jax.random.key_data(next_keys[i]), jax.random.key_data(key))
            np.testing.assert_allclose(values[:, 5 * i:5 * (i + 1)],
                                       state_value(learner.network, state.params, obs[5 * i:5 * (i + 1)])[None]
                                       .repeat(3, 0), rtol=1e-6)


def test_what_may_differ_between_agents_is_what_the_update_traces():
    for algo, module in ALGORITHMS.items():
        traced = {f.name for f in dataclasses.fields(module.HParams) if f.metadata.get("pytree_node", True)}
        assert set(VARYING[algo]) == traced | {"learning_rate", "reward_scale"}  # the step size is a state leaf


@pytest.mark.parametrize("algo,settings", [("ppo", {}), ("ppo", {"anneal_lr": True}), ("a2c", {}),
                                           ("a2c", {"anneal_lr": True, "optimizer": "adam"})])
def test_the_step_size_held_in_the_state_steps_as_optax_does(algo, settings):
    """The learning rate is a leaf of the optimiser state (so agents of different rates share a program); the
    steps it gives are bit for bit those of optax's adam / rmsprop with a constant or linear schedule."""
    config = make_config(algo, settings)
    steps = config.n_epochs * config.num_minibatches if algo == "ppo" else 1
    total = config.total_timesteps // config.rollout_size * steps
    rate = optax.linear_schedule(config.learning_rate, 0.0, total) if config.anneal_lr else config.learning_rate
    inner = (optax.adam(rate, eps=config.adam_eps) if getattr(config, "optimizer", "adam") == "adam" else
             optax.rmsprop(rate, decay=config.rms_decay, eps=config.rms_eps, eps_in_sqrt=False))
    reference = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), inner)
    ours = ALGORITHMS[algo].make_optimizer(config)
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    ref_state, our_state = reference.init(params), ours.init(params)
    for t in range(5):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(t), p.shape), params)
        ref_updates, ref_state = reference.update(grads, ref_state, params)
        our_updates, our_state = ours.update(grads, our_state, params)
        jax.tree.map(np.testing.assert_array_equal, our_updates, ref_updates)


@pytest.mark.slow
def test_agents_of_different_step_sizes_share_one_compiled_update_and_each_steps_by_its_own():
    """A step size of 1e-12 leaves its agent's parameters where they were while the other agent's move: the rates are
    values in the state, not constants compiled in."""
    from jaxrl_lander.training.agents import AgentsLearner
    from jaxrl_lander.training.runtime import Devices

    configs = [tiny(0, learning_rate=1e-12), tiny(1, learning_rate=1e-3)]
    learners = [make_learner(c, obs_dim=8, action_size=4) for c in configs]
    agents = AgentsLearner(learners, Devices.resolve())
    state = agents.place(stack([learner.init(jax.random.key(i)) for i, learner in enumerate(learners)]))
    t, width = configs[0].n_steps, 2 * configs[0].num_envs
    rng = np.random.default_rng(0)
    rollout = Rollout(rng.normal(size=(t, width, 8)).astype(np.float32), rng.integers(0, 4, (t, width), np.int32),
                      rng.normal(size=(t, width)).astype(np.float32), np.zeros((t, width), np.float32),
                      rng.normal(size=(width, 8)).astype(np.float32))
    new, metrics = agents.update(state, rollout)
    new, metrics = agents.update(new, rollout)
    moved = [max(float(jnp.abs(a[i] - b[i]).max()) for a, b in zip(jax.tree.leaves(new.params),
                                                                    jax.tree.leaves(state.params))) for i in (0, 1)]
    assert moved[0] < 1e-9 and moved[1] > 1e-4
    assert agents._update._cache_size() == 1 and metrics["loss"].shape == (2,)


def test_stacked_agents_play_the_episodes_each_would_play_alone():
    learner = make_learner(make_config("ppo", {}), obs_dim=8, action_size=4)
    states = [learner.init(jax.random.key(seed)) for seed in (0, 1)]
    together = evaluate_agents(learner.network, stack([s.params for s in states]), EnvChoice("LunarLander-v3"), 3,
                               [100, 500])
    for state, summary, seed in zip(states, together, (100, 500)):
        alone = evaluate(Policy(learner.network, state.params), EnvChoice("LunarLander-v3"), 3, seed)
        assert summary == alone and summary["seeds"] == [seed, seed + 1, seed + 2]


def test_train_states_sliced_on_the_host_are_each_agents_own():
    learner = make_learner(make_config("ppo", {}), obs_dim=8, action_size=4)
    states = [learner.init(jax.random.key(seed)) for seed in (5, 6)]
    host = on_host(stack(states))
    for i, state in enumerate(states):
        mine = agent_of(host, i)
        jax.tree.map(np.testing.assert_array_equal, mine.params, state.params)
        np.testing.assert_array_equal(jax.random.key_data(mine.key), jax.random.key_data(state.key))


def test_sweep_variants_one_per_value_and_combination():
    assert list(sweep_variants("ppo", ["gamma=0.99"])) == [""]
    variants = sweep_variants("ppo", ["learning_rate=[1e-4,3e-4]", "ent_coef=[0.0,0.01]", "n_epochs=4"])
    assert list(variants) == ["learning_rate=0.0001,ent_coef=0", "learning_rate=0.0001,ent_coef=0.01",
                              "learning_rate=0.0003,ent_coef=0", "learning_rate=0.0003,ent_coef=0.01"]
    assert variants["learning_rate=0.0003,ent_coef=0.01"] == {"learning_rate": 3e-4, "ent_coef": 0.01, "n_epochs": 4}
    for bad in (["learning_rate=[]"], ["learning_rate=[1e-3,0.001]"], ["learning_rate=[1e-3,\"x\"]"],
                ["learning_rate=[1,1.0]"], ["gamma=[0.99999999,0.999999999]"]):  # the last two: one name
        with pytest.raises(ConfigError):
            sweep_variants("ppo", bad)


def test_a_stopped_run_of_agents_says_what_it_left():
    from types import SimpleNamespace

    from jaxrl_lander.config.errors import Interrupted, TrainingFailed
    from jaxrl_lander.training.run import Stopped

    stopped = Stopped(signal.SIGTERM, 640, agents=2)
    checkpointed = SimpleNamespace(status="interrupted")  # an agent's Results
    kept = Interrupted(signal.SIGTERM, "stopped by SIGTERM at step 640, before the overwrite's first checkpoint; ...")
    failed = TrainingFailed("non-finite loss nan at update 1 (step 512); no checkpoint was written before it")
    assert stopped.message([checkpointed, checkpointed]) == (
        "2 agents stopped by SIGTERM at step 640; each with a checkpoint there: run again to continue")
    assert stopped.message([kept, kept]) == ("2 agents stopped by SIGTERM at step 640; 2 kept their previous"
                                             " experiment (stopped before the overwrite's first checkpoint)")
    assert stopped.message([kept, checkpointed]).endswith("first checkpoint); 1 with a checkpoint there")
    assert stopped.message([checkpointed, failed]) == (
        f"2 agents stopped by SIGTERM at step 640; 1 with a checkpoint there: run again to continue; 1 had failed:"
        f" {failed}")
    assert Stopped(signal.SIGTERM, 640, 2, overwrite=True).message([checkpointed] * 2).endswith(
        "run again (without overwrite) to continue")
    assert Stopped(signal.SIGINT, 64, agents=1).message([checkpointed]) == (
        "stopped by SIGINT at step 64, with a checkpoint there: run again to continue")
    assert Stopped(signal.SIGINT, 64, agents=1).message([kept]) == str(kept)
    with pytest.raises(ConfigError, match="at least one config"):
        train_agents([], [])


def test_agents_of_one_program_differ_only_in_traced_values():
    check_agents([tiny(0), tiny(1, learning_rate=1e-3, gamma=0.9)])
    with pytest.raises(ConfigError, match="not in n_steps"):
        check_agents([tiny(0), tiny(1, n_steps=64)])
    with pytest.raises(ConfigError, match="envpool backend only"):
        check_agents([make_config("ppo", {}), make_config("ppo", {"seed": 1})])
    check_agents([make_config("ppo", {})])  # one agent is a standalone run, on either backend


@pytest.mark.needs("envpool")
def test_agents_without_a_checkpoint_step_in_common_are_refused_and_nothing_is_deleted(tmp_path):
    """A seed added to an interrupted sweep (or agents whose kept checkpoints do not meet) must not wipe the
    others' runs by starting every agent afresh."""
    from jaxrl_lander.config.errors import ResumeError
    from jaxrl_lander.training.run import Run
    from jaxrl_lander.training.runtime import Devices

    configs = [tiny(0), tiny(1)]
    paths = [experiment_paths(tmp_path, "ppo", c.seed) for c in configs]
    (paths[0].checkpoints / "256").mkdir(parents=True)
    agents = Run(configs, paths, [None, None], Devices.resolve(), EnvShape(8, 4))
    with pytest.raises(ResumeError, match="no checkpoint step in common.*ppo_seed1 has none"):
        agents.open(resume=True)
    assert (paths[0].checkpoints / "256").is_dir()
    shutil.rmtree(paths[0].checkpoints / "256")  # a kill during the first round of checkpoints: all afresh
    (paths[0].checkpoints / "128").mkdir(parents=True)
    agents = Run(configs, paths, [None, None], Devices.resolve(), EnvShape(8, 4))
    agents.open(resume=True)
    assert [p.timestep for p in agents.progress] == [0, 0] and not (paths[0].checkpoints / "128").exists()
    agents.close()


@pytest.mark.needs("envpool")
def test_an_agent_plays_its_standalone_runs_first_rollout_wherever_it_stands_among_others(tmp_path):
    """Each agent's sub-envs are seeded as in its standalone run (envpool's env_seed, one seed per sub-env), so its
    first rollout is its standalone run's, first or second in the seed list, whoever its companion."""
    from jaxrl_lander.training.run import Run
    from jaxrl_lander.training.runtime import Devices
    from jaxrl_lander.training.seeding import train_env_seed

    def first_rollout(seeds: list[int], agent: int) -> dict[str, np.ndarray]:
        configs = [tiny(seed) for seed in seeds]
        paths = [experiment_paths(tmp_path / "-".join(map(str, seeds)), "ppo", seed) for seed in seeds]
        run = Run(configs, paths, [None] * len(seeds), Devices.resolve(), EnvShape(8, 4))
        state = run.open(resume=False)
        run.collector.start([train_env_seed(keys.env, 0) for keys in run.keys])
        run.collector.advance(state, 0, configs[0].rollout_size, [True] * len(seeds), lambda: False)
        rows = jax.device_get(run.collector.rows)
        run.close()
        return run._part({name: rows[name] for name in ("obs", "actions", "rewards")}, agent)

    alone = first_rollout([7], 0)
    assert alone["obs"].shape == (TINY["n_steps"], TINY["num_envs"], 8) and np.abs(alone["obs"]).sum() > 0
    for seeds, agent in (([7, 3], 0), ([3, 7], 1), ([5, 9, 7], 2)):
        among = first_rollout(seeds, agent)
        for name in alone:
            np.testing.assert_array_equal(among[name], alone[name], err_msg=f"{name} of seed 7 among {seeds}")
    other = first_rollout([3], 0)
    assert not np.array_equal(other["obs"], alone["obs"])  # the check can fail: another seed plays otherwise


def _params(path: Path) -> np.ndarray:
    from jaxrl_lander.training.evaluate import load_policy

    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(load_policy(path).params)])


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_one_agent_of_train_agents_is_a_standalone_run(tmp_path):
    """One lifecycle: train_agents of one config is train() of it, bit for bit (no agent axis for one agent)."""
    from jaxrl_lander.training.run import train

    config = tiny(7)
    (vectorised,) = train_agents([config], [tmp_path / "agents"], progress_bar=False)
    standalone = train(config, tmp_path / "alone", progress_bar=False)
    assert vectorised.evaluation["returns"] == standalone.evaluation["returns"]
    np.testing.assert_array_equal(_params(tmp_path / "agents/experiments/ppo_seed7"),
                                  _params(tmp_path / "alone/experiments/ppo_seed7"))
    assert vectorised.updates == standalone.updates == 2


@pytest.mark.slow
@pytest.mark.needs("envpool")
@pytest.mark.needs("tensorboardX")
def test_several_agents_have_every_option_of_one(tmp_path):
    """One lifecycle: --overwrite, --init-from and TensorBoard serve several agents as they serve one."""
    from jaxrl_lander.config.errors import ConfigError

    configs = [tiny(0, steps=256), tiny(1, steps=256)]
    first = train_agents(configs, [tmp_path / "agents"] * 2, progress_bar=False)
    with pytest.raises(ConfigError, match="config differs from the finished run's in hidden_size"):
        train_agents([tiny(0, steps=256, hidden_size=32), tiny(1, steps=256, hidden_size=32)],
                     [tmp_path / "agents"] * 2, progress_bar=False)  # as train() refuses it, not its old results
    (donor,) = train_agents([tiny(5, steps=256)], [tmp_path / "donor"], progress_bar=False)
    with pytest.raises(ConfigError, match="already holds an experiment"):  # a new experiment over one: refused
        train_agents(configs, [tmp_path / "agents"] * 2, init_from=donor.experiment_dir, progress_bar=False)
    again = train_agents(configs, [tmp_path / "agents"] * 2, overwrite=True, tensorboard=True,
                         init_from=donor.experiment_dir, progress_bar=False)
    for before, after in zip(first, again):
        assert after.status == "completed" and after.timestep == 256
        assert after.initialized_from["seed"] == 5 and before.initialized_from is None
        assert after.start_time > before.start_time  # replaced, not resumed
        assert list((after.experiment_dir / "tensorboard").rglob("events.out.tfevents.*"))
        assert not list(before.experiment_dir.parent.glob(".*.new"))  # no staging directory left


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_agents_refused_at_their_common_step_lose_no_checkpoint(tmp_path):
    """An agent's later checkpoints are dropped to resume with the others only once every agent's checkpoint at
    the common step is known to be resumable: a refusal deletes nothing."""
    from jaxrl_lander.config.errors import ConfigError

    configs = [tiny(0, steps=256), tiny(1, steps=256)]
    train_agents(configs, [tmp_path] * 2, progress_bar=False)
    ahead, behind = (experiment_paths(tmp_path, "ppo", seed) for seed in (0, 1))
    for paths in (ahead, behind):
        paths.results.unlink()  # as if killed before it finished
    shutil.rmtree(behind.checkpoints / "256")  # killed before its last checkpoint: the common step is 128
    from jaxrl_lander.config.errors import ResumeError

    # refused by the agent ahead, and by the one behind (which has nothing to drop): nothing deleted either way
    with pytest.raises(ConfigError, match="config differs from the checkpoint in hidden_size"):
        train_agents([tiny(0, steps=512, hidden_size=32), tiny(1, steps=512, hidden_size=32)], [tmp_path] * 2,
                     progress_bar=False)
    with pytest.raises(ConfigError, match="config differs from the checkpoint in learning_rate"):
        train_agents([tiny(0, steps=512), tiny(1, steps=512, learning_rate=1e-3)], [tmp_path] * 2,
                     progress_bar=False)
    journal = behind.metrics_journal.read_bytes()
    behind.metrics_journal.write_text("{not json\n")
    with pytest.raises(ResumeError, match="metrics file .* is unreadable"):
        train_agents([tiny(0, steps=512), tiny(1, steps=512)], [tmp_path] * 2, progress_bar=False)
    behind.metrics_journal.write_bytes(journal)
    assert (ahead.checkpoints / "256").is_dir()  # nothing deleted
    results = train_agents([tiny(0, steps=512), tiny(1, steps=512)], [tmp_path] * 2, progress_bar=False)
    assert [r.resumed_from_timestep for r in results] == [128, 128] and all(r.timestep == 512 for r in results)


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_an_agent_whose_update_is_not_finite_fails_alone(tmp_path):
    healthy, diverging = tiny(0), tiny(1, reward_scale=1e38)  # rewards overflow float32: the loss is not finite
    results = train_agents([healthy, diverging], [tmp_path, tmp_path], progress_bar=False)
    assert results[0].status == "completed" and results[0].updates == 2
    assert "non-finite" in str(results[1]) and "update 1 (step 256)" in str(results[1])
    failed = read_json(experiment_paths(tmp_path, "ppo", 1).results)
    assert failed["status"] == "failed" and failed["updates"] == 1 and failed["failure"] == "numerical"
    assert failed["timestep"] == 256  # where it failed, as a standalone run says, not where the others got to
    again = train_agents([healthy, diverging], [tmp_path, tmp_path], progress_bar=False)
    assert again[0].start_time == results[0].start_time and str(again[1]) == failed["reason"]  # both left alone
    from jaxrl_lander.config.errors import ConfigError

    # another config is not the failed run's: it resumes as train(resume=True) would, here refused by its checkpoint
    with pytest.raises(ConfigError, match="config differs from the checkpoint in reward_scale"):
        train_agents([healthy, tiny(1, reward_scale=1.0)], [tmp_path, tmp_path], progress_bar=False)


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_an_agent_failing_inside_a_program_of_many_updates_fails_alone_at_its_update(tmp_path, monkeypatch):
    """With the update inside envpool's program (25 A2C updates a call), an agent whose first update is not
    finite fails at that update, its state left as it was; the other trains on to the end."""
    from jaxrl_lander.training import compiled

    monkeypatch.setattr(compiled, "UPDATES_TO_FUSE", 0)
    base = {"env_backend": "envpool", "total_timesteps": 2_000, "checkpoint_interval": 1_000, "eval_episodes": 2}
    healthy = make_config("a2c", {**base, "seed": 0})
    diverging = make_config("a2c", {**base, "seed": 1, "reward_scale": 1e38})  # the loss overflows float32
    results = train_agents([healthy, diverging], [tmp_path, tmp_path], progress_bar=False)
    assert results[0].status == "completed" and results[0].updates == 50 and results[0].timestep == 2_000
    assert "update 1 (step 40)" in str(results[1])
    failed = read_json(experiment_paths(tmp_path, "a2c", 1).results)
    assert failed["status"] == "failed" and failed["updates"] == 1 and failed["timestep"] == 40


def _sweep(*args, cwd, kill_at=None):
    """A vectorised sweep of tiny.toml in a child process; with `kill_at`, killed there (tests/kill_at.py)."""
    cmd = cli_command("sweep", "--algo", "ppo", "--config", "tiny.toml", "--vectorized", *args, point=kill_at)
    return subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=300)


def _complete_run(paths: ExperimentPaths, steps: int) -> dict:
    results = read_json(paths.results)
    assert results["status"] == "completed" and results["timestep"] == steps
    assert results["success_criteria"]["SC-005"]["passed"] and results["success_criteria"]["SC-003"]["passed"]
    assert [r["timestep"] for r in read_json(paths.metrics)["records"]] == list(range(64, steps + 1, 64))
    return results


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_a_vectorised_sweep_writes_each_seed_as_a_standalone_run_and_repeats_itself(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    run = _sweep("--seeds", "0", "--steps", "256", "--set", "learning_rate=[3e-4,1e-3]", "--name", "first",
                 cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "first/learning_rate=0.001: 1 seeds | final evaluation mean" in run.stdout
    # The same command again (in a process of its own: the same devices, so the same sharded program)
    again = _sweep("--seeds", "0", "--steps", "256", "--set", "learning_rate=[3e-4,1e-3]", "--name", "second",
                   cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    for variant, rate in (("learning_rate=0.0003", 3e-4), ("learning_rate=0.001", 1e-3)):
        for seed in (0,):
            first, second = (experiment_paths(tmp_path / "results/sweeps" / name / variant, "ppo", seed)
                             for name in ("first", "second"))
            results = _complete_run(first, 256)
            assert results["hyperparameters"]["learning_rate"] == rate
            assert sorted(int(p.name) for p in first.checkpoints.iterdir()) == [128, 256]
            assert first.model.is_dir() and first.metrics_journal.is_file()
            untimed = lambda m: ([{k: v for k, v in r.items() if k != "timestamp"} for r in m["records"]],  # noqa: E731
                                 m["episodes"])
            assert untimed(read_json(first.metrics)) == untimed(read_json(second.metrics))  # the same run again
            assert results["evaluation"]["returns"] == read_json(second.results)["evaluation"]["returns"]
        summary = read_json(tmp_path / "results/sweeps/first" / variant / "summary.json")
        assert summary["final_evaluation"]["n"] == 1 and summary["hyperparameters"]["learning_rate"] == rate
    both = read_json(tmp_path / "results/sweeps/first/summary.json")
    assert list(both["variants"]) == ["learning_rate=0.0003", "learning_rate=0.001"]
    again = _sweep("--seeds", "0", "--steps", "256", "--set", "learning_rate=[3e-4,1e-3]", "--name", "first",
                   cwd=tmp_path)  # finished: nothing trains again
    assert again.returncode == 0 and "step " not in again.stderr


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_a_vectorised_sweep_stopped_then_killed_resumes_every_agent_each_time(tmp_path):
    """Ctrl-C (a SIGINT once the first agent's checkpoint of step 256 is written) stops every agent at one step,
    each with a checkpoint and an interrupted results JSON. The rerun is then killed (SIGKILL) while the agents
    write their checkpoints of step 640; the next resumes every agent from the last step all of them have a
    checkpoint of (an agent that got further drops its later ones) and completes them."""
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    args = ("--seeds", "0", "1", "--steps", "1024")
    paths = [experiment_paths(tmp_path / "results/sweeps/tiny", "ppo", seed) for seed in (0, 1)]
    committed = lambda agent: sorted(int(p.name) for p in agent.checkpoints.iterdir() if p.name.isdigit())  # noqa

    stopped_run = _sweep(*args, cwd=tmp_path, kill_at="interrupt:256")
    assert stopped_run.returncode == 128 + signal.SIGINT, stopped_run.stderr[-2000:]
    assert "2 agents stopped by SIGINT at step" in stopped_run.stderr.splitlines()[-1]
    stopped = [read_json(agent.results) for agent in paths]
    assert {(r["status"], r["stop"]) for r in stopped} == {("interrupted", "SIGINT")}
    at = stopped[0]["timestep"]
    assert 256 <= at < 640 and stopped[1]["timestep"] == at
    assert all(committed(agent)[-1] == at for agent in paths)

    killed = _sweep(*args, cwd=tmp_path, kill_at="checkpoint:640")
    assert killed.returncode == -signal.SIGKILL
    steps = [committed(agent) for agent in paths]
    assert all(max(s) in (512, 640) for s in steps)
    if max(steps[1]) == max(steps[0]):  # make the agents uneven, as a kill between two agents' commits does
        shutil.rmtree(paths[1].checkpoints / str(max(steps[1])))
    common = min(max(committed(agent)) for agent in paths)

    resumed = _sweep(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert {_complete_run(agent, 1024)["resumed_from_timestep"] for agent in paths} == {common}
    grid = [128 * k for k in range(1, 9)]
    for agent in paths:
        assert committed(agent) == sorted({*grid, at}) and not list(agent.checkpoints.glob("*tmp*"))


@pytest.mark.needs("envpool")
def test_a_vectorised_sweep_refuses_agents_another_process_is_writing(cli, tmp_path):
    """The lock is a flock (one per open file): held here, it refuses the command run in this same process as it
    refuses another process."""
    from jaxrl_lander.storage.claim import ExperimentLock

    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    with ExperimentLock(experiment_paths(tmp_path / "results/sweeps/tiny", "ppo", 1)):
        proc = cli("sweep", "--algo", "ppo", "--config", "tiny.toml", "--vectorized", "--seeds", "0", "1", "--steps",
                   "256", cwd=tmp_path)
    assert proc.returncode == 2 and "is in use by" in proc.stderr.splitlines()[-1], proc.stderr
    assert not (tmp_path / "results/sweeps/tiny/experiments/ppo_seed0").exists()


@pytest.mark.parametrize("args,message", [
    (["--backend", "gymnasium"], "vectorised agents run on the envpool backend only"),
    (["--set", "n_steps=[32,64]"], "may differ in the seed and learning_rate"),
    (["--jobs", "2"], "--jobs has no meaning with --vectorized"),
    (["--set", "learning_rate=[]"], "needs distinct values"),
    pytest.param(["--name", "x[1]"], "--name must be a plain directory name",
                 marks=pytest.mark.needs("envpool")),  # checked once the agents' envs are
], ids=["backend", "n_steps", "jobs", "no-values", "name"])
def test_refusals_of_a_vectorised_sweep_are_one_line(cli, tmp_path, args, message):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    proc = cli("sweep", "--algo", "ppo", "--config", "tiny.toml", "--seeds", "0", "--vectorized", *args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists()


SHARDED = """
import json, sys
import jax
sys.path.insert(0, {tests!r})
from test_agents import sharded_run
print(json.dumps(sharded_run({out!r})))
"""


def sharded_run(out: str) -> dict:
    from jaxrl_lander.training.agents import AgentsLearner
    from jaxrl_lander.training.runtime import Devices

    configs = [tiny(0, steps=256), tiny(1, steps=256, learning_rate=1e-3), tiny(2, steps=256, gamma=0.9)]
    mesh = AgentsLearner([make_learner(c, 8, 4) for c in configs], Devices.resolve()).mesh
    results = train_agents(configs, [out] * 3, progress_bar=False)
    return {"devices": len(jax.devices()), "mesh": int(mesh.devices.size),
            "returns": [r.evaluation["returns"] for r in results]}


@pytest.mark.slow
@pytest.mark.needs("envpool")
def test_agents_sharded_over_two_devices_learn_what_one_device_learns(tmp_path):
    """Three agents on two CPU devices (padded to four inside the update) against the same on one device."""
    env = child_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", SHARDED.format(tests=str(HERE), out=str(tmp_path / "on2"))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout.splitlines()[-1])
    one = sharded_run(str(tmp_path / "on1"))  # this process: one CPU device
    assert (one["devices"], one["mesh"], two["devices"], two["mesh"]) == (1, 1, 2, 2)
    assert one["returns"] == two["returns"]
    for seed in (0, 1, 2):
        np.testing.assert_allclose(_params(tmp_path / f"on1/experiments/ppo_seed{seed}"),
                                   _params(tmp_path / f"on2/experiments/ppo_seed{seed}"), atol=1e-5)
