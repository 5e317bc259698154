"""Soak: one run killed with SIGKILL 20 times, resumed after each, ends where an uninterrupted run ends.

The kills come at moments of the run's own progress, not of the clock, through tests/kill_at.py's points: before
each launch the test reads the checkpoint the run will resume from, and draws (random.Random(0): the same draws
on every machine) a point that process is certain to reach. The first 15 land in training: a vector-env step, a
checkpoint's commit or an append to the metrics journal, within the steps left after the resume; the last 5 in
the run's finish: its model written, the model before it moved aside for it, its metrics or results JSON written.
So every one of the 20 processes dies by SIGKILL, on a fast machine as on a slow one.

About a minute and a half on 2 cores: marked slow, so the fast tier (`make test`) leaves it out; `make test-all`
runs it, and `make soak` runs it alone.
"""

import random

import pytest
from helpers import experiment_paths, load_json, run_cli, template_state

from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.config import make_config
from jaxrl_lander.storage.files import ExperimentPaths

KILLS = 20
FINISH_KILLS = 5  # the last kills: while the run finishes
STEPS = 12_000
INTERVAL = 200  # steps between checkpoints, and of one rollout (8 envs x 25)
SETTINGS = {"n_steps": 25, "checkpoint_interval": INTERVAL, "eval_episodes": 2}
CONFIG = make_config("a2c", {**SETTINGS, "total_timesteps": STEPS})
VECTOR_STEPS = INTERVAL // CONFIG.num_envs  # vector-env steps between two checkpoints
REACH = 6  # a kill in training lands within this many checkpoints of the resume
TRAINING = ("rollout", "checkpoint", "journal")


def resumes_at(paths: ExperimentPaths) -> int:
    """The step a --resume of the experiment continues from: its latest committed checkpoint (0: none)."""
    if not paths.checkpoints.is_dir():
        return 0
    store = CheckpointStore(paths.checkpoints)
    try:
        return store.latest_step() or 0
    finally:
        store.close()


def kill_point(draw: random.Random, start: int, finishing: bool, has_model: bool) -> str:
    """A kill_at.py point that a process resuming at step `start` is certain to reach (three draws each, whatever
    the point: the sequence of kinds is the same on every machine).

    In training, within k <= REACH checkpoints of the resume: the vector-env step number n <= k * VECTOR_STEPS of
    this process, the checkpoint of start + k * INTERVAL, or the k-th append to the metrics journal (one before
    each checkpoint); such a kill keeps at most k - 1 checkpoints of progress, so the 15 of them (at most 48
    checkpoints) never come within REACH of the end, and the points drawn are the same everywhere but for the
    step they count from. In the finish, which every process reaches unless killed before: the swap, when there
    is a model already (the one before it moved aside, the new one not yet in its place); the model written but
    not renamed; the first or second JSON write of the process: metrics, then results (the results JSON is never
    before them, so the run stays unfinished).
    """
    kind, reach, where = draw.random(), draw.random(), draw.random()
    left = (STEPS - start) // INTERVAL
    if left and not finishing:
        k = 1 + int(reach * min(left, REACH))
        return [f"rollout:{1 + int(where * k * VECTOR_STEPS)}", f"checkpoint:{start + k * INTERVAL}",
                f"journal:{k}"][int(kind * len(TRAINING))]
    points = [*(["swap"] if has_model else []), "model", "json:1", "json:2"]
    return points[int(kind * len(points))]


@pytest.mark.slow
def test_twenty_sigkills_and_resumes_end_where_an_uninterrupted_run_ends(tmp_path):
    (tmp_path / "soak.toml").write_text("".join(f"{k} = {v}\n" for k, v in SETTINGS.items()))

    def train(results_dir, *extra, point=None):
        return run_cli("train", "--algo", "a2c", "--steps", STEPS, "--config", "soak.toml", "--results-dir",
                       results_dir, "--quiet", *extra, cwd=tmp_path, point=point, timeout=600)

    whole = train("whole")
    assert whole.returncode == 0, whole.stderr

    paths = experiment_paths(tmp_path / "killed", "a2c", 42)
    draw = random.Random(0)
    points = []
    for i in range(KILLS):
        has_model = paths.model.is_dir() or paths.model.with_name(f".{paths.model.name}.old").is_dir()
        points.append(kill_point(draw, resumes_at(paths), i >= KILLS - FINISH_KILLS, has_model))
        proc = train("killed", *(["--resume"] if i else []), point=points[-1])
        assert proc.returncode == -9, f"kill {i + 1} at {points[-1]}: {proc.stderr}"  # SIGKILL, where chosen
        assert not paths.results.exists(), points  # the run never finished
    assert {p.partition(":")[0] for p in points} == {*TRAINING, "model", "json", "swap"}, points
    last = train("killed", "--resume")
    assert last.returncode == 0, last.stderr

    runs = {}
    for name in ("whole", "killed"):
        exp = tmp_path / name / "experiments" / "a2c_seed42"
        runs[name] = (load_json(exp / "a2c_seed42_results.json"), load_json(exp / "a2c_seed42_metrics.json"))
        store = CheckpointStore(exp / "checkpoints")
        for step in store.all_steps():
            assert store.restore(step, template_state(CONFIG))[1]["timestep"] == step
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
