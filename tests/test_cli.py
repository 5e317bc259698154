"""The command line: bad input gives one line and exit 2 with nothing written; a tiny real run succeeds."""

import os
import subprocess
import sys

import jax
import pytest
from conftest import load_json


def run_cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "jaxrl_lander", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


BAD = [
    (["train", "--algo", "dqn"], "invalid choice: 'dqn'"),
    (["train", "--algo", "ppo", "--steps", "0"], "steps must be a positive integer"),
    (["train", "--algo", "ppo", "--steps", "-5"], "steps must be a positive integer"),
    (["train", "--algo", "ppo", "--steps", "abc"], "steps must be an integer"),
    (["train", "--algo", "ppo", "--steps", "1.5"], "steps must be an integer"),
    (["train", "--algo", "ppo", "--seed", "-1"], "seed must be an integer >= 0"),
    (["train", "--algo", "ppo", "--seed", "x"], "seed must be an integer"),
    (["train", "--algo", "ppo", "--config", "missing.toml"], "config file not found"),
    (["train", "--algo", "ppo", "--config", "bad.toml"], "is not valid TOML"),
    (["train", "--algo", "ppo", "--config", "unknown.toml"], "unknown config key 'lr'"),
    (["train", "--algo", "ppo", "--config", "wrongtype.toml"], "must be float"),
    (["train", "--algo", "a2c", "--config", "ppo_only.toml"], "config for 'ppo', not for 'a2c'"),
    (["train"], "the following arguments are required: --algo"),
    (["evaluate", "nowhere"], "no trained model found"),
    (["train", "--algo", "ppo", "--device", "quantum"], "invalid choice: 'quantum'"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, message):
    (tmp_path / "bad.toml").write_text("gamma = [\n")
    (tmp_path / "unknown.toml").write_text("lr = 0.1\n")
    (tmp_path / "wrongtype.toml").write_text("learning_rate = 'fast'\n")
    (tmp_path / "ppo_only.toml").write_text('algo = "ppo"\nclip_range = 0.1\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no results/ directory appeared


def test_tiny_run_through_the_cli(tmp_path):
    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 200\neval_episodes = 2\n")
    proc = run_cli("train", "--algo", "a2c", "--seed", "3", "--steps", "400", "--config", "tiny.toml", "--quiet",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "INFO" not in proc.stderr  # --quiet: no progress lines
    assert "a2c_seed3: 400 steps" in proc.stdout and "evaluation over 2 episodes" in proc.stdout
    results = load_json(tmp_path / "results/experiments/a2c_seed3/a2c_seed3_results.json")
    assert results["seed"] == 3 and results["total_timesteps"] == 400
    assert results["artifacts"]["checkpoints"] == ["checkpoints/200", "checkpoints/400"]
    png = tmp_path / "results/experiments/a2c_seed3/a2c_seed3_learning_curve.png"  # plotted after training
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run_cli("evaluate", "results/experiments/a2c_seed3", "--episodes", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"episodes": 2' in proc.stdout
    proc = run_cli("plot", "results/experiments/a2c_seed3", "results/experiments/a2c_seed3", "--out", "cmp.png",
                   cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    proc = run_cli("plot", "results/experiments/nothing", cwd=tmp_path)
    assert proc.returncode == 2 and "no experiment directory" in proc.stderr


@pytest.mark.skipif(any(d.platform == "gpu" for d in jax.devices()), reason="a GPU is present")
def test_missing_gpu_is_a_usage_error(tmp_path):
    proc = run_cli("train", "--algo", "ppo", "--device", "gpu", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "jaxrl_lander: error: no GPU is visible to JAX on this machine"]
    assert list(tmp_path.iterdir()) == []


def test_reproduce_records_sc004(tmp_path):
    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 200\neval_episodes = 2\n")
    proc = run_cli("reproduce", "--algo", "ppo", "--steps", "600", "--config", "tiny.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "SC-004 PASS" in proc.stdout and "parameters identical: True" in proc.stdout
    results = load_json(tmp_path / "results/experiments/ppo_seed42/ppo_seed42_results.json")
    assert results["success_criteria"]["SC-004"]["value"] == 0.0
    assert results["success_criteria"]["SC-004"]["passed"] is True
    assert results["reproducibility"]["metrics_identical"] is True
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["experiments"]  # the scratch run is gone
    from test_train_e2e import _validate

    from jaxrl_lander.schemas import EXPERIMENT_RESULTS

    _validate(results, EXPERIMENT_RESULTS)
