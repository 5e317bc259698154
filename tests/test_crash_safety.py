"""SIGKILL at chosen moments leaves only complete files; a resume cleans up and finishes a valid artifact set."""

import json
import signal
from pathlib import Path

import pytest
from helpers import load_json, run_cli, template_state, validate

from jaxrl_lander import load_policy
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.config import make_config
from jaxrl_lander.storage.metrics import MetricsRecorder
from jaxrl_lander.storage.schemas import EXPERIMENT_RESULTS, TRAINING_METRICS

HERE = Path(__file__).parent
STEPS, CHECKPOINT_EVERY = 2_000, 200
TRAIN = ["train", "--algo", "a2c", "--seed", "7", "--steps", str(STEPS), "--config", "crash.toml", "--quiet"]
NAME = "a2c_seed7"


def expected_record_steps(config) -> list[int]:
    """Where an uninterrupted run records: the first step count past each multiple of recording_interval."""
    steps = range(config.num_envs, config.total_timesteps + 1, config.num_envs)
    return [t for t in steps if t // config.recording_interval > (t - config.num_envs) // config.recording_interval]


def assert_only_complete_files(exp: Path, template, config) -> list[str]:
    """Every visible file is complete and valid, and the metrics journal holds exactly what an uninterrupted run
    had recorded at each checkpoint; returns the names of leftover partial writes, and of the journal when its
    last line is torn."""
    for name, schema in ((f"{NAME}_metrics.json", TRAINING_METRICS), (f"{NAME}_results.json", EXPERIMENT_RESULTS)):
        if (exp / name).exists():
            validate(load_json(exp / name), schema)
    store = CheckpointStore(exp / "checkpoints")
    for step in store.all_steps():
        _, meta = store.restore(step, template)
        assert meta["timestep"] == step
        # The journal as a resume from this checkpoint reads it: up to the step, and no further.
        at_step = MetricsRecorder.load_journal(exp / f"{NAME}_metrics.jsonl", step)
        validate(at_step.to_dict(), TRAINING_METRICS)
        assert [r["timestep"] for r in at_step.records] == [t for t in expected_record_steps(config) if t <= step]
        assert len(at_step.episodes) == meta["episodes"]
    store.close()
    leftovers = [p.name for d in (exp, exp / "checkpoints") if d.is_dir() for p in d.iterdir()
                 if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name]  # .x.json.tmp, .curve.png.tmp.png
    journal = exp / f"{NAME}_metrics.jsonl"
    if journal.is_file() and not journal.read_bytes().endswith(b"\n"):
        leftovers.append(f"{journal.name} (torn line)")
    return leftovers


# (kill point in that process, the partial write it must leave, the latest complete checkpoint afterwards).
# Checkpoints are saved asynchronously, so when a kill lands between checkpoints the previous one may still be
# in flight: it is then left uncommitted (and invisible), and the latest complete one is the one before.
KILLS = [
    ("rollout:133", None, {800, 1_000}),  # step 1,056: mid-rollout, between checkpoints
    ("checkpoint:1400", "1400.orbax-checkpoint-tmp", {1_200}),  # written to its temporary directory only
    ("journal:3", "_metrics.jsonl (torn line)", {1_400, 1_600}),  # half the metrics for the checkpoint of 1,800
    # The process's 1st JSON write: the metrics JSON, written when a run ends, after its model.
    ("json:1", f".{NAME}_metrics.json.", {2_000}),
    ("model", "_model.new.orbax-checkpoint-tmp", {2_000}),  # training done, the final model written, not committed
]


@pytest.mark.slow
def test_sigkill_at_five_moments_then_resume_gives_a_complete_valid_run(tmp_path):
    """One run killed five times in a row, each time resumed, at the moments that matter; then finished."""
    # 800-transition rollouts: every kill but the last two lands with part of one collected since an update.
    (tmp_path / "crash.toml").write_text(f"checkpoint_interval = {CHECKPOINT_EVERY}\neval_episodes = 2\n"
                                         "n_steps = 100\n")
    config = make_config("a2c", {"seed": 7, "total_timesteps": STEPS, "checkpoint_interval": CHECKPOINT_EVERY,
                                 "eval_episodes": 2, "n_steps": 100})
    exp = tmp_path / "results" / "experiments" / NAME
    template = template_state(config)

    for i, (point, leftover, latest) in enumerate(KILLS):
        killed = run_cli(*TRAIN, *(["--resume"] if i else []), cwd=tmp_path, point=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        leftovers = assert_only_complete_files(exp, template, config)
        assert leftover is None or any(leftover in name for name in leftovers), (point, leftovers)
        assert CheckpointStore(exp / "checkpoints").latest_step() in latest, point  # uncommitted = invisible
        assert not (exp / f"{NAME}_results.json").exists()  # no process reached its results yet

    resumed = run_cli(*TRAIN, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert assert_only_complete_files(exp, template, config) == []  # partial writes cleaned on resume
    results = load_json(exp / f"{NAME}_results.json")
    assert results["status"] == "completed" and results["timestep"] == STEPS
    assert results["resumed_from_timestep"] == STEPS  # the last process only wrote the model and results
    assert results["success_criteria"]["SC-005"]["passed"] is True
    # The updates of an uninterrupted run (at 800 and 1,600): each checkpoint kept the rollout in progress. Before,
    # a resume threw it away, and this run made 1.
    assert results["updates"] == STEPS // 800
    assert results["artifacts"]["checkpoints"] == [f"checkpoints/{s}" for s in range(200, STEPS + 1, 200)]
    metrics = load_json(exp / f"{NAME}_metrics.json")
    # No gaps and no duplicates: exactly the records an uninterrupted run makes.
    assert [r["timestep"] for r in metrics["records"]] == expected_record_steps(config)
    episode_steps = [e["timestep"] for e in metrics["episodes"]]
    assert episode_steps == sorted(episode_steps)
    assert json.loads((exp / f"{NAME}_model" / "policy" / "metadata").read_text())["timestep"] == STEPS


@pytest.mark.slow
def test_a_resume_that_dies_delivering_its_model_leaves_the_previous_one(tmp_path):
    """A finished run resumed to more steps, killed while its new model is written, or between moving the old one
    aside and the new one in: the model the results name is whole, or back in place at the next claim."""
    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 200\neval_episodes = 1\n")
    train = ["train", "--algo", "a2c", "--config", "tiny.toml", "--quiet", "--steps"]
    exp = tmp_path / "results" / "experiments" / "a2c_seed42"
    assert run_cli(*train, "400", cwd=tmp_path).returncode == 0
    killed = run_cli(*train, "600", "--resume", cwd=tmp_path, point="model")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_policy(exp) is not None and load_json(exp / "a2c_seed42_model/policy/metadata")["timestep"] == 400
    killed = run_cli(*train, "600", "--resume", cwd=tmp_path, point="swap")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (exp / "a2c_seed42_model").exists() and (exp / ".a2c_seed42_model.old").is_dir()
    resumed = run_cli(*train, "600", "--resume", cwd=tmp_path)  # puts the old one back, then delivers the new one
    assert resumed.returncode == 0, resumed.stderr
    assert load_json(exp / "a2c_seed42_model/policy/metadata")["timestep"] == 600
    assert load_json(exp / "a2c_seed42_results.json")["timestep"] == 600
    assert sorted(p.name for p in exp.iterdir() if p.name.startswith(".")) == []
    # Killed after its new model, before its results (its 2nd JSON write): a resume with the results' total does
    # not call that finished, and the total of the model's checkpoint delivers it whole again.
    killed = run_cli(*train, "800", "--resume", cwd=tmp_path, point="json:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_json(exp / "a2c_seed42_model/policy/metadata")["timestep"] == 800
    assert load_json(exp / "a2c_seed42_results.json")["timestep"] == 600
    stale = run_cli(*train, "600", "--resume", cwd=tmp_path)
    assert stale.returncode == 2 and "its checkpoint is at step 800, past total_timesteps 600" in stale.stderr
    again = run_cli(*train, "800", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert load_json(exp / "a2c_seed42_results.json")["timestep"] == 800
