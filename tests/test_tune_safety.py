"""Tuning studies under what goes wrong: workers that join at once with different spaces, trials that are never
evaluated during training or that keep failing, a storage URL with a password, a worker killed, a storage that
fails under a running study (a PostgreSQL server stopped, a full disk), and a study path that looks like a URL."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import SPACE, Postgres, experiment_paths, load_json, run_cli, study_json, tmpfs, tune_args, wait_for

from jaxrl_lander.config import load_config
from jaxrl_lander.config.errors import ExperimentInUse
from jaxrl_lander.studies.tune_space import read_space

PASSWORD = Postgres.PASSWORD
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d [A-Z]+ ")  # what the logging of the command line writes
# What a test needs beyond the package's own dependencies: tune.py opens its study with Optuna (and SQLAlchemy,
# which Optuna brings); a postgresql:// URL is tried with psycopg, the tune extra's driver; the command's report
# draws its PNGs with matplotlib.
OPTUNA = pytest.mark.needs("optuna")
POSTGRES = pytest.mark.needs("optuna", "psycopg")
STUDY_CLI = pytest.mark.needs("optuna", "matplotlib")


def error_lines(stderr: str) -> list[str]:
    """The lines of `stderr` that are not log lines (a failure's own line; a traceback's many)."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def space_file(tmp_path: Path, vf_high: float = 1.0) -> Path:
    path = tmp_path / f"space_{vf_high}.toml"
    path.write_text(SPACE.replace("high = 1.0 }", f"high = {vf_high} }}"))
    return path


def checkpointed(root: Path, trial: int, study: str) -> bool:
    checkpoints = experiment_paths(root / "results/tuning" / study / f"trial_{trial:04d}", "a2c", 42).checkpoints
    return checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())


# ---------------------------------------------------------------- the study's identity
@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("sqlite", marks=OPTUNA), pytest.param("postgresql", marks=POSTGRES)])
def test_workers_joining_at_once_with_different_spaces_let_exactly_one_space_in(tmp_path, backend, request,
                                                                                monkeypatch):
    import optuna

    import jaxrl_lander.studies.tune as tune

    spaces = [read_space(space_file(tmp_path, high), "a2c") for high in (1.0, 0.9, 0.8)]
    base = load_config(None, "a2c", spaces[0].settings)
    # a new database: the first round's workers also create its tables at once
    url = request.getfixturevalue("postgres").new_database("joins") if backend == "postgresql" else None
    claim = tune.claim_identity
    workers, rounds = 6, 10
    for round in range(rounds):
        start, claiming, outcomes = threading.Barrier(workers), threading.Barrier(workers, timeout=60), [""] * workers
        # every worker has its study open and claims at the same moment: the window of a read-then-write race
        monkeypatch.setattr(tune, "claim_identity", lambda *a, **k: claiming.wait() is None or claim(*a, **k))

        def join(i: int) -> None:
            start.wait()
            try:
                tune.Study(f"s{round}", base, spaces[i % 3], 4, tmp_path / f"s{round}", storage=url, heartbeat=1)
                outcomes[i] = "joined"
            except Exception as exc:
                outcomes[i] = f"{type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=join, args=(i,)) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        joined = {i % 3 for i, outcome in enumerate(outcomes) if outcome == "joined"}
        assert len(joined) == 1, (round, outcomes)
        winner = joined.pop()
        assert all(outcomes[i] == f"ConfigError: study 's{round}' was made with another space: give another --study,"
                   " or the same config, settings, space, --steps and seeds" for i in range(workers) if i % 3 != winner)
        stored = optuna.load_study(study_name=f"s{round}", storage=url or f"sqlite:///{tmp_path}/s{round}/study.db")
        assert stored.user_attrs["identity"]["space"] == json.loads(json.dumps(spaces[winner].ranges))


# ---------------------------------------------------------------- trials that cannot be scored, or fail
@pytest.mark.slow
@STUDY_CLI
def test_trials_never_evaluated_during_training_are_scored_by_their_final_evaluation(tmp_path):
    (tmp_path / "space.toml").write_text(SPACE)
    proc = run_cli(*tune_args(2, "--steps", "480", "--set", "eval_interval=1000", "--timeout", "150"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = "eval_interval 1000 >= steps 480: trials are scored by their final evaluation and cannot be pruned"
    assert proc.stderr.count(warning) == 1, proc.stderr
    assert "writing the report of study space: study.json, best.toml, PNGs" in proc.stderr
    trials = study_json(tmp_path)["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        results = load_json(tmp_path / trial["experiments"][0] / "a2c_seed42_results.json")
        assert results["evaluations_during_training"] == [] and trial["intermediate_values"] == {}
        assert trial["value"] == trial["final_evaluation"] == results["evaluation"]["mean"]


@pytest.mark.slow
@STUDY_CLI
def test_three_failed_trials_in_a_row_stop_the_study_naming_the_last_cause(tmp_path):
    (tmp_path / "space.toml").write_text(SPACE)
    first = run_cli(*tune_args(1), cwd=tmp_path)  # the study, and its trial 0
    assert first.returncode == 0, first.stderr
    for number in range(1, 7):  # each later trial finds a file where its experiment's checkpoints directory goes
        paths = experiment_paths(tmp_path / f"results/tuning/space/trial_{number:04d}", "a2c", 42)
        paths.root.mkdir(parents=True)
        paths.checkpoints.write_text("in the way\n")
    proc = run_cli(*tune_args(5, "--timeout", "150"), cwd=tmp_path)
    errors = error_lines(proc.stderr)
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("jaxrl_lander: training failed: study space stopped: 3 trials in a row failed, the"
                                " last (3) because cannot resume ")
    assert "checkpoints is not a directory" in errors[0]
    trials = study_json(tmp_path)["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] + ["FAIL"] * 3
    assert all(f"trial_{t['number']:04d}" in t["failure"] and "checkpoints is not a directory" in t["failure"]
               for t in trials[1:])


@pytest.mark.slow
@STUDY_CLI
def test_a_study_directory_holding_another_studys_trials_is_refused_with_nothing_written(cli, tmp_path):
    """Its storage deleted, or another given: trial_0000 would resume a run of another study, under another config
    (each run again burnt a trial and exited 2)."""
    (tmp_path / "space.toml").write_text(SPACE)
    assert run_cli(*tune_args(1), cwd=tmp_path).returncode == 0
    out = tmp_path / "results/tuning/space"
    (out / "study.db").unlink()
    before = sorted(p.name for p in out.iterdir())
    proc = cli(*tune_args(2), cwd=tmp_path)  # refused in main(), before any trial: this process will do
    assert proc.returncode == 2 and error_lines(proc.stderr) == [
        "jaxrl_lander: error: results/tuning/space holds 1 trial(s) of a study that results/tuning/space/study.db does"
        " not hold (trial_0000...): give another --study, the storage of that study, or move the directory away"
    ], proc.stderr
    assert sorted(p.name for p in out.iterdir()) == before


# ---------------------------------------------------------------- secrets
@pytest.mark.slow
@POSTGRES
def test_a_failure_quoting_the_storage_url_is_stored_and_logged_without_its_password(tmp_path, postgres, caplog,
                                                                                     monkeypatch):
    import optuna

    import jaxrl_lander.studies.tune as tune

    url = postgres.url(driver="postgresql+psycopg")
    calls, real_train = [], tune.train_agents

    def train_agents(configs, directories, **kwargs):  # the first trial finds its experiment held by a command
        calls.append(directories)  # quoting the URL
        if len(calls) == 1:
            raise ExperimentInUse(f"{directories[0]} is in use by process 1 (python -m jaxrl_lander tune --storage"
                                  f" {url})")
        return real_train(configs, directories, **kwargs)

    monkeypatch.setattr(tune, "train_agents", train_agents)
    space = read_space(space_file(tmp_path), "a2c")
    study = tune.Study("secret", load_config(None, "a2c", space.settings), space, 1, tmp_path / "secret", storage=url,
                       heartbeat=1)
    with caplog.at_level(logging.INFO, logger="jaxrl_lander.studies.tune"):
        study.run()
        study.report()
    masked = f"--storage postgresql+psycopg://tuner:***@127.0.0.1:{postgres.port}/postgres"
    text = (tmp_path / "secret/study.json").read_text()
    data = json.loads(text)
    assert [t["state"] for t in data["trials"]] == ["FAIL", "COMPLETE"]
    assert masked in data["trials"][0]["failure"] and data["storage"] == masked.removeprefix("--storage ")
    assert PASSWORD not in text
    stored = optuna.load_study(study_name="secret", storage=url).trials
    assert stored[0].user_attrs["failure"] == data["trials"][0]["failure"]
    assert not any(PASSWORD in json.dumps(t.user_attrs) for t in stored)
    assert f"trial 0 failed: {data['trials'][0]['failure']}" in caplog.text and PASSWORD not in caplog.text


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def _started_workers(parent: int, count: int) -> list[int] | None:
    """`parent`'s `count` child processes once each runs its own command: a child forked but not yet exec'd still
    shows its parent's command line and environment (the URL with its password among them)."""
    children = _children(parent)
    try:
        own = Path(f"/proc/{parent}/cmdline").read_bytes()
        started = [pid for pid in children if Path(f"/proc/{pid}/cmdline").read_bytes() not in (own, b"")]
    except OSError:  # one ended, or has not yet been listed: look again
        return None
    return started if len(children) == count and len(started) == count else None


@pytest.mark.slow
@pytest.mark.needs("optuna", "psycopg", "matplotlib")
def test_workers_get_the_storage_in_their_environment_and_a_killed_worker_is_named(tmp_path, postgres):
    (tmp_path / "space.toml").write_text(SPACE)
    url = postgres.url(driver="postgresql+psycopg")
    cmd = [sys.executable, "-m", "jaxrl_lander", *tune_args(2, "--steps", "2000", "--heartbeat", "1"), "--storage",
           url, "--study", "workers"]
    cmd[cmd.index("--jobs") + 1] = "2"
    parent = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        workers = wait_for(lambda: _started_workers(parent.pid, 2), "two workers", parent)
        for pid in workers:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"--worker" in argv and b"--storage" not in argv and not any(PASSWORD.encode() in a for a in argv)
            assert f"JAXRL_LANDER_STORAGE={url}".encode() in environ
        wait_for(lambda: checkpointed(tmp_path, 0, "workers") and checkpointed(tmp_path, 1, "workers"),
                 "both trials' first checkpoints", parent)
        os.kill(workers[0], signal.SIGKILL)
        _, err = parent.communicate(timeout=300)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, err  # nothing lost: said as a warning, and the study's line follows
    assert ("WARNING a worker of study workers was killed by SIGKILL; the other workers retried its trial, and the"
            " study is full") in err and error_lines(err) == [], err
    data = study_json(tmp_path, "workers")
    assert data["trials_counted"] == 2 and sorted(t["state"] for t in data["trials"]) == ["COMPLETE"] * 2 + ["FAIL"]
    killed = next(t for t in data["trials"] if t["state"] == "FAIL")
    assert killed["failure"] == "its worker stopped sending heartbeats (killed, or stalled for three of them)"
    assert PASSWORD not in err and PASSWORD not in (tmp_path / "results/tuning/workers/study.json").read_text()


# ---------------------------------------------------------------- the storage fails under a running study
@pytest.mark.slow
@pytest.mark.needs("optuna", "psycopg", "matplotlib")
def test_a_server_stopped_under_a_running_study_is_one_line_and_the_same_command_goes_on(tmp_path, postgres):
    (tmp_path / "space.toml").write_text(SPACE)
    args = tune_args(2, "--storage", postgres.url(), "--study", "lost", "--heartbeat", "1", "--steps", "2000")
    args[args.index("--jobs") + 1] = "2"  # two workers meet the lost server: the command tells it once
    proc = subprocess.Popen([sys.executable, "-m", "jaxrl_lander", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"), text=True)
    try:
        wait_for(lambda: checkpointed(tmp_path, 0, "lost") and checkpointed(tmp_path, 1, "lost"),
                 "both trials' first checkpoints", proc)  # both workers past their start-up
        postgres.stop()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        postgres.start()
    errors = error_lines(err)
    assert proc.returncode == 1 and len(errors) == 1, err
    assert errors[0].startswith("jaxrl_lander: training failed: could not use the storage of study lost (")
    assert errors[0].endswith("the study stopped; run the same command again to go on once the storage works (a"
                              " trial in hand resumes from its checkpoints)")
    assert PASSWORD not in err
    args[args.index("--jobs") + 1] = "1"
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    data = study_json(tmp_path, "lost")
    assert data["trials_counted"] == 2 and sum(t["state"] == "COMPLETE" for t in data["trials"]) == 2
    lost = [t for t in data["trials"] if t["state"] == "FAIL" and "surplus" not in t]  # running when it stopped
    assert lost and {t["number"] for t in lost} <= {0, 1}  # (one may have ended before the server stopped)
    resumed = []
    for trial in lost:  # each failed once its heartbeats were old, and its retry went on from its checkpoints
        assert trial["failure"] == "its worker stopped sending heartbeats (killed, or stalled for three of them)"
        retry = next(t for t in data["trials"] if t["retry_of"] == trial["number"])
        results = load_json(tmp_path / retry["experiments"][0] / "a2c_seed42_results.json")
        assert retry["state"] == "COMPLETE" and "failure" not in retry
        assert results["status"] == "completed" and results["timestep"] == 2000
        resumed.append(results["resumed_from_timestep"])  # None: its run had ended, and only its tell was lost
    assert any(step is not None and step >= 256 for step in resumed)  # the later one was at its first checkpoint


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk


@pytest.mark.slow
@STUDY_CLI
def test_a_full_disk_under_a_sqlite_study_is_one_line_and_the_same_command_goes_on(tmp_path, small_disk):
    (tmp_path / "space.toml").write_text(SPACE)
    args = tune_args(3, "--heartbeat", "1", "--results-dir", str(small_disk), "--timeout", "150")
    full = run_cli(*args, cwd=tmp_path)
    errors = error_lines(full.stderr)
    assert full.returncode == 1 and len(errors) == 1, full.stderr
    # the study's database or a trial's checkpoint: whichever write found the disk full first
    assert "database or disk is full" in errors[0] or "No space left on device" in errors[0]
    assert "run the same command again to go on" in errors[0] or "which is retried when it runs again" in errors[0]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert load_json(small_disk / "tuning/space/study.json")["trials_counted"] == 3


# ---------------------------------------------------------------- the study's file
@OPTUNA
def test_the_study_database_lands_at_its_path_whatever_characters_that_holds(tmp_path):
    from jaxrl_lander.studies.tune import Study

    results = tmp_path / "r %41 #1 {x}"  # %41 is a URL's A, # its fragment, {x} a format field
    space = read_space(space_file(tmp_path), "a2c")
    study = Study("s", load_config(None, "a2c", space.settings), space, 1, results / "tuning" / "s", heartbeat=1)
    with study.storage.engine.connect() as db:
        files = {row[1]: row[2] for row in db.exec_driver_sql("PRAGMA database_list")}
    assert files["main"] == str(results / "tuning/s/study.db")
    assert (results / "tuning/s/study.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([results.name, "space_1.0.toml"])


@STUDY_CLI
def test_a_space_whose_every_draw_the_config_refuses_ends_with_one_line_exit_2(cli, tmp_path):
    """Each trial's values refused together (reward_scale beside normalize_rewards): the study ends, and says why."""
    (tmp_path / "space.toml").write_text(SPACE.replace("[settings]", "[settings]\nnormalize_rewards = true").replace(
        "[space]", '[space]\nreward_scale = { type = "float", low = 2.0, high = 5.0 }'))
    proc = cli(*tune_args(2), cwd=tmp_path)  # no trial trains, no worker starts: in this process
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1, proc.stderr
    assert error_lines(proc.stderr)[0].startswith("jaxrl_lander: error: study space: the config refused every trial's"
                                                  " values (the last: ")
    assert "both rescale rewards" in proc.stderr
    assert [t["state"] for t in study_json(tmp_path)["trials"]] == ["PRUNED", "PRUNED"]
