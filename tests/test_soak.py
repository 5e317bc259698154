"""Soak: one run killed with SIGKILL at 20 random moments, resumed after each, ends where an uninterrupted run ends.

About two minutes on 2 cores, so `make test` skips it; `make soak` runs it (JAXRL_LANDER_SOAK=1).
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import load_json, template_state

from jaxrl_lander.checkpoint import CheckpointStore
from jaxrl_lander.config import make_config

KILLS = 20
STEPS = 12_000
SETTINGS = {"n_steps": 25, "checkpoint_interval": 200, "eval_episodes": 2}  # 200-step rollouts


@pytest.mark.skipif(os.environ.get("JAXRL_LANDER_SOAK") != "1", reason="make soak runs it")
def test_twenty_sigkills_and_resumes_end_where_an_uninterrupted_run_ends(tmp_path):
    (tmp_path / "soak.toml").write_text("".join(f"{k} = {v}\n" for k, v in SETTINGS.items()))
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def command(results_dir, *extra):
        return [sys.executable, "-m", "jaxrl_lander", "train", "--algo", "a2c", "--steps", str(STEPS), "--config",
                "soak.toml", "--results-dir", results_dir, "--quiet", *extra]

    whole = subprocess.run(command("whole"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    moments = random.Random(0)
    killed = 0
    for i in range(KILLS):
        proc = subprocess.Popen(command("killed", *(["--resume"] if i else [])), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(moments.uniform(1.0, 4.5))  # start-up, rollouts, updates, checkpoint commits, the finish
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read()
        proc.stderr.close()
    assert killed >= KILLS // 2  # most of them landed before the run could finish
    last = subprocess.run(command("killed", "--resume"), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert last.returncode == 0, last.stderr

    runs = {}
    for name in ("whole", "killed"):
        exp = tmp_path / name / "experiments" / "a2c_seed42"
        runs[name] = (load_json(exp / "a2c_seed42_results.json"), load_json(exp / "a2c_seed42_metrics.json"))
        store = CheckpointStore(exp / "checkpoints")
        config = make_config("a2c", {**SETTINGS, "total_timesteps": STEPS})
        for step in store.all_steps():
            assert store.restore(step, template_state(config))[1]["timestep"] == step
        store.close()
    (results, metrics), (whole_results, whole_metrics) = runs["killed"], runs["whole"]
    assert results["status"] == "completed" and results["success_criteria"]["SC-005"]["passed"] is True
    assert results["timestep"] == whole_results["timestep"] == STEPS
    assert results["updates"] == whole_results["updates"] == STEPS // 200  # every transition learned from, once
    assert [r["timestep"] for r in metrics["records"]] == [r["timestep"] for r in whole_metrics["records"]]
    assert results["artifacts"]["checkpoints"] == whole_results["artifacts"]["checkpoints"]
    # Episodes: the killed run's envs began new episodes at every resume, so their returns differ; each is recorded
    # once, in step order, and the records count them as the uninterrupted run's records count its own.
    steps = [e["timestep"] for e in metrics["episodes"]]
    assert steps == sorted(steps) and steps[-1] <= STEPS
    assert [r["episode"] for r in metrics["records"]] == [sum(s <= r["timestep"] for s in steps)
                                                         for r in metrics["records"]]
