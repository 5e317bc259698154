"""Metrics recorder: values, JSON round trip, truncation on resume, atomic writes."""

import json
import os

import pytest

from jaxrl_lander.config import make_config
from jaxrl_lander.storage.files import is_partial_write, replaced_atomically, write_json_atomic
from jaxrl_lander.storage.metrics import MetricsRecorder


def _recorder():
    rec = MetricsRecorder("ppo_seed42", "ppo", "LunarLander-v3", 42, 100)
    rec.record(100, None)
    rec.add_episode(150, -100.0, 80)
    rec.add_episode(180, -50.0, 120)
    rec.record(200, 1.5)
    rec.add_episode(260, 30.0, 100)
    rec.record(300, 0.25)
    return rec


def test_records_and_statistics_values():
    rec = _recorder()
    assert [r["timestep"] for r in rec.records] == [100, 200, 300]
    assert rec.records[0]["reward"] is None and rec.records[0]["episode"] == 0 and rec.records[0]["loss"] is None
    assert rec.records[1]["reward"] == pytest.approx(-75.0)
    assert rec.records[1]["episode_length"] == pytest.approx(100.0)
    assert rec.records[2]["episode"] == 3 and rec.records[2]["loss"] == 0.25
    stats = rec.statistics()
    assert stats["reward_mean"] == pytest.approx(-40.0)
    assert stats["reward_std"] == pytest.approx((((60**2) + (10**2) + (70**2)) / 3) ** 0.5)
    assert (stats["reward_min"], stats["reward_max"], stats["total_episodes"]) == (-100.0, 30.0, 3)
    assert stats["episode_length_mean"] == pytest.approx(100.0)
    assert rec.reward_at(200) == pytest.approx(-75.0) and rec.reward_at(120) is None


def test_rolling_mean_uses_the_last_100_episodes():
    rec = MetricsRecorder("a2c_seed1", "a2c", "LunarLander-v3", 1, 100)
    for i in range(150):
        rec.add_episode(i + 1, float(i), 10)
    assert rec.recent_reward_mean == pytest.approx(sum(range(50, 150)) / 100)


def test_json_round_trip(tmp_path):
    rec = _recorder()
    path = tmp_path / "m.json"
    rec.save(path)
    loaded = MetricsRecorder.load(path)
    assert loaded.to_dict() == rec.to_dict()
    assert loaded.recent_reward_mean == rec.recent_reward_mean
    loaded.add_episode(400, 0.0, 5)  # the loaded recorder keeps working
    assert loaded.statistics()["total_episodes"] == 4


def test_truncate_drops_what_came_after_a_checkpoint():
    rec = _recorder()
    rec.truncate(200)
    assert [r["timestep"] for r in rec.records] == [100, 200]
    assert rec.statistics()["total_episodes"] == 2
    assert rec.recent_reward_mean == pytest.approx(-75.0)


def test_atomic_write_leaves_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"bad": float("nan")})  # NaN is not JSON
    assert json.loads(path.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left behind


def test_replaced_atomically_and_partial_write_names(tmp_path):
    path = tmp_path / "curve.png"
    with replaced_atomically(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"  # writers pick the format by the suffix
        tmp.write_bytes(b"first")
        assert is_partial_write(tmp)  # what a process killed right here would leave
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError), replaced_atomically(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["curve.png"]
    assert not is_partial_write(path)
    (tmp_path / ".r.json.k2j4.tmp").write_text("{")  # write_json_atomic's temporary name
    assert is_partial_write(tmp_path / ".r.json.k2j4.tmp")


def test_experiment_paths_of_a_run_and_of_a_renamed_copy(tmp_path):
    from jaxrl_lander.storage.files import ExperimentPaths

    paths = ExperimentPaths.of(tmp_path, make_config("ppo", {"seed": 7}))
    assert paths.root == tmp_path / "experiments" / "ppo_seed7" and paths.name == "ppo_seed7"
    assert paths.results.name == "ppo_seed7_results.json" and paths.model.name == "ppo_seed7_model"
    copy = tmp_path / "my copy"
    copy.mkdir()
    assert ExperimentPaths.at(copy).name == "my copy"  # holds nothing yet: named after itself
    (copy / "ppo_seed7_metrics.json").write_text("{}")
    (copy / "ppo_seed7_model").mkdir()
    assert ExperimentPaths.at(copy).metrics == copy / "ppo_seed7_metrics.json"  # the one experiment it holds
    (copy / "a2c_seed1_model").mkdir()
    assert ExperimentPaths.at(copy).name == "my copy"  # two: no guess


def test_plot_rolling_mean_matches_the_recorder():
    import numpy as np

    from jaxrl_lander.outputs.plotting import rolling_mean

    rec = MetricsRecorder("a2c_seed1", "a2c", "LunarLander-v3", 1, 100)
    returns = np.random.default_rng(0).normal(size=250)
    expected = []
    for i, r in enumerate(returns):
        rec.add_episode(i + 1, float(r), 10)
        expected.append(rec.recent_reward_mean)
    np.testing.assert_allclose(rolling_mean(returns), expected, rtol=1e-10)
