"""The metrics journal: appends round-trip, a resume cuts it back (a torn last line included) and appends go on,
and each append costs the same whatever the history. (An experiment written before the journal resumes:
test_train_e2e.py, beside one written with it.)"""

import json
import os
import shutil

import pytest
from helpers import experiment_paths, validate, without_times

from jaxrl_lander.storage.files import ExperimentPaths
from jaxrl_lander.storage.metrics import MetricsRecorder, metrics_file, read_metrics
from jaxrl_lander.storage.schemas import TRAINING_METRICS


def _recorder() -> MetricsRecorder:
    return MetricsRecorder("ppo_seed42", "ppo", "LunarLander-v3", 42, 100)


def _train(rec: MetricsRecorder, start: int, end: int) -> None:
    """What the loop hands the recorder from step `start` to `end`: a record every 100 steps, an episode every 70."""
    for t in range(start + 1, end + 1):
        if t % 70 == 0:
            rec.add_episode(t, float(t % 300) - 150.0, 70)
        if t % 100 == 0:
            rec.record(t, 0.5)


def _journaled(path, checkpoints) -> MetricsRecorder:
    """A recorder trained up to each checkpoint in turn, its journal appended at each, as Experiment.checkpoint does."""
    rec, last = _recorder(), 0
    for step in checkpoints:
        _train(rec, last, step)
        rec.append_journal(path, step)
        last = step
    return rec


def _same(loaded: MetricsRecorder, rec: MetricsRecorder, apart: bool = False) -> None:
    """The same content; for a recorder made `apart` (a reference run), save for the times of day."""
    strip = without_times if apart else dict
    assert strip(loaded.to_dict()) == strip(rec.to_dict())
    assert loaded.recent_reward_mean == rec.recent_reward_mean


def test_journal_round_trip(tmp_path):
    path = tmp_path / "m.jsonl"
    rec = _journaled(path, [200, 400, 600, 800])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"metadata": rec.metadata}  # the first line of a new journal
    assert [line["step"] for line in lines[1:]] == [200, 400, 600, 800]
    assert [r["timestep"] for r in lines[2]["records"]] == [300, 400]  # only what came since the last append
    _same(MetricsRecorder.load_journal(path), rec)
    _same(MetricsRecorder.load_journal(path, 800), rec)
    loaded = MetricsRecorder.load_journal(path, 800)
    loaded.add_episode(900, 1.0, 5)  # the loaded recorder keeps working
    assert loaded.statistics()["total_episodes"] == len(rec.episodes) + 1


def test_a_new_recorder_starts_a_new_journal(tmp_path):
    path = tmp_path / "m.jsonl"
    _journaled(path, [200, 400, 600])
    rec = _journaled(path, [200])  # a run started afresh does not append to another run's journal
    _same(MetricsRecorder.load_journal(path), rec)


def test_resume_cuts_the_journal_and_appends_continue(tmp_path):
    path = tmp_path / "m.jsonl"
    _journaled(path, [200, 400, 600, 800])
    size_at_400 = len("".join(path.read_text().splitlines(keepends=True)[:3]))
    resumed = MetricsRecorder.load_journal(path, 400)
    _same(resumed, _journaled(tmp_path / "reference.jsonl", [200, 400]), apart=True)
    resumed.truncate(400)
    resumed.continue_journal(path, 400)
    assert path.stat().st_size == size_at_400  # the lines of 600 and 800 are gone
    _train(resumed, 400, 700)
    resumed.append_journal(path, 700)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()[1:]] == [200, 400, 700]
    _same(MetricsRecorder.load_journal(path), _journaled(tmp_path / "uninterrupted.jsonl", [200, 400, 700]), apart=True)


def test_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "m.jsonl"
    _journaled(path, [200, 400, 600])
    line_600 = path.read_text().splitlines(keepends=True)[-1]
    with open(path, "a") as f:  # a process killed half-way through the append for the checkpoint of 800
        f.write(line_600[: len(line_600) // 2])
    expected = _journaled(tmp_path / "reference.jsonl", [200, 400, 600])
    _same(MetricsRecorder.load_journal(path), expected, apart=True)
    resumed = MetricsRecorder.load_journal(path, 600)
    resumed.continue_journal(path, 600)
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 4
    _train(resumed, 600, 800)
    resumed.append_journal(path, 800)
    _train(expected, 600, 800)
    _same(MetricsRecorder.load_journal(path), expected, apart=True)


@pytest.mark.parametrize("text,message", [
    ("", "no metadata line"),
    ('{"step": 200, "records": [], "episodes": []}\n', "no metadata line"),
])
def test_a_journal_without_its_metadata_is_refused(tmp_path, text, message):
    path = tmp_path / "m.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        MetricsRecorder.load_journal(path)


def test_a_broken_line_before_the_last_is_an_error_not_a_torn_line(tmp_path):
    path = tmp_path / "m.jsonl"
    _journaled(path, [200, 400])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:20] + "\n" + lines[2])
    with pytest.raises(ValueError):
        MetricsRecorder.load_journal(path)


def test_a_journal_short_of_the_checkpoint_is_refused(tmp_path):
    """Metrics are saved before their checkpoint: a journal that does not reach it has lost some."""
    path = tmp_path / "m.jsonl"
    _journaled(path, [200, 400])
    with pytest.raises(ValueError, match="reaches step 400, not the checkpoint's step 600"):
        MetricsRecorder.load_journal(path, 600)
    with pytest.raises(ValueError, match="reaches step 200, not the checkpoint's step 300"):
        MetricsRecorder.load_journal(path, 300)


def test_a_failed_append_takes_back_what_it_wrote(tmp_path, monkeypatch):
    """A full disk mid-append leaves no torn line for the next append to follow; that append writes it all."""
    import errno
    import types

    from jaxrl_lander.storage import files

    path = tmp_path / "m.jsonl"
    rec = _journaled(path, [200])
    before = path.read_bytes()
    real_os = files.os

    def write_a_little_then_fail(fd, data):
        if len(data) > 10:
            return real_os.write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "os", types.SimpleNamespace(**{**vars(real_os), "write": write_a_little_then_fail}))
    _train(rec, 200, 400)
    with pytest.raises(OSError, match=f"No space left on device: '{path}'"):
        rec.append_journal(path, 400)
    assert path.read_bytes() == before
    monkeypatch.setattr(files, "os", real_os)
    rec.append_journal(path, 400)
    _same(MetricsRecorder.load_journal(path, 400), rec)


@pytest.mark.parametrize("history", [10, 100_000])
def test_an_append_writes_only_what_is_new(tmp_path, history):
    """The cost of a checkpoint's save does not grow with the run: the bytes it appends are those of its own
    records and episodes, the same after 10 earlier records as after 100,000."""
    path = tmp_path / "m.jsonl"
    rec = _recorder()
    for i in range(history):
        rec.add_episode(i, -100.0, 200)
        rec.records.append({"timestep": i, "episode": i, "reward": -100.0, "episode_length": 200.0, "loss": 0.5,
                            "timestamp": "2026-01-01T00:00:00.000+00:00"})
    rec.append_journal(path, 10_000_000)
    before = path.stat().st_size
    new_records = [{"timestep": 10_000_000 + 100 * i, "episode": 7, "reward": 1.5, "episode_length": 300.0,
                    "loss": 0.25, "timestamp": "2026-01-02T00:00:00.000+00:00"} for i in range(10)]
    rec.records.extend(new_records)
    for i in range(5):
        rec.add_episode(10_000_000 + 200 * i, 12.5, 300)
    written = rec.append_journal(path, 10_001_000)
    new = {"step": 10_001_000, "records": new_records, "episodes": rec.episodes[-5:]}
    assert path.stat().st_size - before == written == len(json.dumps(new, separators=(",", ":"))) + 1
    assert json.loads(path.read_text().splitlines()[-1]) == new


def test_read_metrics_takes_the_newer_of_the_json_and_the_journal(tmp_path):
    paths = experiment_paths(tmp_path, "ppo", 42)
    paths.root.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        metrics_file(paths)
    rec = _journaled(paths.metrics_journal, [200, 400])
    assert metrics_file(paths) == paths.metrics_journal  # a run still training, or killed
    assert read_metrics(metrics_file(paths)) == rec.to_dict()
    validate(read_metrics(metrics_file(paths)), TRAINING_METRICS)
    rec.save(paths.metrics)
    os.utime(paths.metrics_journal, ns=(1, 1))
    assert metrics_file(paths) == paths.metrics  # a finished run
    os.utime(paths.metrics, ns=(0, 0))
    assert metrics_file(paths) == paths.metrics_journal  # resumed since it finished


@pytest.mark.needs("matplotlib")
def test_plot_of_a_run_with_only_its_journal(tmp_path):
    from jaxrl_lander.outputs.plotting import plot_experiments

    paths = experiment_paths(tmp_path, "ppo", 42)
    paths.root.mkdir(parents=True)
    _journaled(paths.metrics_journal, [200, 400, 600])
    copy = tmp_path / "copy of a killed run"  # named after the experiment its journal belongs to
    shutil.copytree(paths.root, copy)
    assert ExperimentPaths.at(copy).name == "ppo_seed42"
    assert plot_experiments([copy]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_writers_of_one_file_each_replace_it_whole(tmp_path):
    """Two processes writing the same PNG or GIF at once (two plots) each write their own temporary file."""
    from jaxrl_lander.storage.files import replaced_atomically

    target = tmp_path / "curve.png"
    with replaced_atomically(target) as first, replaced_atomically(target) as second:
        assert first != second and first.suffix == second.suffix == ".png"
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]
