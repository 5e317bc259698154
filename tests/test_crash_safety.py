"""SIGKILL at chosen moments leaves only complete files; a resume cleans up and finishes a valid artifact set."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_json
from test_train_e2e import _validate

from jaxrl_lander.checkpoint import CheckpointStore
from jaxrl_lander.config import make_config
from jaxrl_lander.schemas import EXPERIMENT_RESULTS, TRAINING_METRICS
from jaxrl_lander.train import Trainer

HERE = Path(__file__).parent
STEPS, CHECKPOINT_EVERY = 2_000, 200
TRAIN = ["train", "--algo", "a2c", "--seed", "7", "--steps", str(STEPS), "--config", "crash.toml", "--quiet"]
NAME = "a2c_seed7"


def run(args, cwd, point=None):
    prefix = [str(HERE / "kill_at.py"), point, "--"] if point else ["-m", "jaxrl_lander"]
    return subprocess.run([sys.executable, *prefix, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def expected_record_steps(config) -> list[int]:
    """Where an uninterrupted run records: the first step count past each multiple of recording_interval."""
    steps = range(config.num_envs, config.total_timesteps + 1, config.num_envs)
    return [t for t in steps if t // config.recording_interval > (t - config.num_envs) // config.recording_interval]


def assert_only_complete_files(exp: Path, template) -> list[str]:
    """Every visible file is complete and valid; returns the names of leftover partial writes."""
    for name, schema in ((f"{NAME}_metrics.json", TRAINING_METRICS), (f"{NAME}_results.json", EXPERIMENT_RESULTS)):
        if (exp / name).exists():
            _validate(load_json(exp / name), schema)
    store = CheckpointStore(exp / "checkpoints")
    for step in store.all_steps():
        _, meta = store.restore(step, template)
        assert meta["timestep"] == step
    store.close()
    leftovers = [p.name for d in (exp, exp / "checkpoints") if d.is_dir() for p in d.iterdir()
                 if p.name.endswith(".tmp") or "orbax-checkpoint-tmp" in p.name]
    return leftovers


# (kill point, the partial write it must leave). Checkpoints are saved asynchronously, so at any moment the
# previous checkpoint may still be in flight and be left uncommitted too.
POINTS = [
    ("rollout:133", None),  # step 1,056: mid-rollout, between checkpoints
    ("checkpoint:1000", "1000.orbax-checkpoint-tmp"),  # written to its temporary directory, not committed
    ("json:6", ".tmp"),  # the 6th JSON write (metrics before the checkpoint of step 1,200), not renamed
    ("model", "_model.orbax-checkpoint-tmp"),  # training done, the final model written but not committed
]


@pytest.mark.parametrize("point,leftover", POINTS, ids=[p for p, _ in POINTS])
def test_sigkill_then_resume_gives_a_complete_valid_run(tmp_path, point, leftover):
    (tmp_path / "crash.toml").write_text(f"checkpoint_interval = {CHECKPOINT_EVERY}\neval_episodes = 2\n")
    config = make_config("a2c", {"seed": 7, "total_timesteps": STEPS, "checkpoint_interval": CHECKPOINT_EVERY,
                                 "eval_episodes": 2})
    exp = tmp_path / "results" / "experiments" / NAME
    template = Trainer(config, tmp_path / "scratch").initial_state()

    killed = run(TRAIN, tmp_path, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = assert_only_complete_files(exp, template)
    assert leftover is None or any(leftover in name for name in leftovers), leftovers
    latest = CheckpointStore(exp / "checkpoints").latest_step()
    if point.startswith("checkpoint"):
        assert latest == 800  # the uncommitted checkpoint is invisible
    assert not (exp / f"{NAME}_results.json").exists()  # no run reached its results yet

    resumed = run([*TRAIN, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert assert_only_complete_files(exp, template) == []  # partial writes cleaned on resume
    results = load_json(exp / f"{NAME}_results.json")
    assert results["status"] == "completed" and results["timestep"] == STEPS
    assert results["resumed_from_timestep"] == latest
    assert results["success_criteria"]["SC-005"]["passed"] is True
    assert results["artifacts"]["checkpoints"] == [f"checkpoints/{s}" for s in range(200, STEPS + 1, 200)]
    metrics = load_json(exp / f"{NAME}_metrics.json")
    # No gaps and no duplicates: exactly the records an uninterrupted run makes.
    assert [r["timestep"] for r in metrics["records"]] == expected_record_steps(config)
    episode_steps = [e["timestep"] for e in metrics["episodes"]]
    assert episode_steps == sorted(episode_steps)
    assert json.loads((exp / f"{NAME}_model" / "policy" / "metadata").read_text())["timestep"] == STEPS
