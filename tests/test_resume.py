"""A resume continues the same learning: the rollout in progress is part of every checkpoint, so a run killed at
any point performs the same number of updates over the same number of transitions as one never interrupted."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from conftest import load_json

from jaxrl_lander.algos import make_learner
from jaxrl_lander.checkpoint import CheckpointStore
from jaxrl_lander.collect import HostCollector
from jaxrl_lander.config import make_config
from jaxrl_lander.envs.gymnasium import make_vector_env
from jaxrl_lander.policy import state_value
from jaxrl_lander.runtime import Devices

HERE = Path(__file__).parent


def test_a_resumed_rollout_cuts_its_last_transition_like_a_time_limit():
    config = make_config("a2c", {"num_envs": 2, "n_steps": 5})
    envs = make_vector_env(config.env_id, config.num_envs)
    learner = make_learner(config, 8, 4)
    state = learner.init(jax.random.key(0))
    collector = HostCollector(envs, learner.network, config, Devices.resolve())
    collector.start(state, 0)
    rng = np.random.default_rng(0)
    arrays = {"obs": rng.normal(size=(5, 2, 8)).astype(np.float32), "actions": np.ones((5, 2), np.int32),
              "rewards": np.full((5, 2), 2.0, np.float32), "dones": np.zeros((5, 2), np.float32),
              "next_obs": rng.normal(size=(2, 8)).astype(np.float32)}
    arrays["dones"][2, 1] = 1.0  # sub-env 1's episode ended right at the cut: nothing to bootstrap
    collector.resume_pending({k: v.copy() for k, v in arrays.items()}, filled=3)

    buffer = collector.buffer
    value = np.asarray(state_value(learner.network, state.params, arrays["next_obs"]))
    assert buffer.pos == 3
    np.testing.assert_allclose(buffer.rewards[2], [2.0 + config.gamma * value[0], 2.0], rtol=1e-6)
    np.testing.assert_array_equal(buffer.dones[2], [1.0, 1.0])
    np.testing.assert_array_equal(buffer.rewards[:2], arrays["rewards"][:2])  # earlier steps as collected
    np.testing.assert_array_equal(buffer.obs[:3], arrays["obs"][:3])
    collector.close()


def test_a_run_killed_mid_rollout_resumes_with_what_it_had_collected(tmp_path):
    """A2C with 800-transition rollouts and checkpoints every 200 steps, killed at step 480: the checkpoint of
    400 holds half a rollout. Before, the resume threw it away and made 1 update where an uninterrupted run makes 2."""
    (tmp_path / "c.toml").write_text("n_steps = 100\ncheckpoint_interval = 200\neval_episodes = 1\n")
    args = ["train", "--algo", "a2c", "--steps", "1600", "--config", "c.toml", "--quiet"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    killed = subprocess.run([sys.executable, str(HERE / "kill_at.py"), "rollout:61", "--", *args], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    exp = tmp_path / "results/experiments/a2c_seed42"
    store = CheckpointStore(exp / "checkpoints")
    latest = store.latest_step()
    assert latest in (200, 400)
    assert store.metadata(latest)["rollout_filled"] == latest // 8  # vector steps into the first rollout
    store.close()

    resumed = subprocess.run([sys.executable, "-m", "jaxrl_lander", *args, "--resume"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    results = load_json(exp / "a2c_seed42_results.json")
    assert results["resumed_from_timestep"] == latest and results["timestep"] == 1600
    assert results["updates"] == 2  # 1600 steps / 800 per rollout, as uninterrupted
