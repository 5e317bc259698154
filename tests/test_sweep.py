"""Sweep statistics (IQM, bootstrap intervals, learning-curve bands) and a tiny real two-seed sweep."""

import json

import numpy as np
import pytest
from test_cli import run_cli

from jaxrl_lander.config import load_config
from jaxrl_lander.sweep import BOOTSTRAP_SAMPLES, bootstrap_ci, iqm, learning_curves, summarize_returns


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm(np.array([-1000.0, 1.0, 2.0, 1000.0])) == pytest.approx(1.5)  # outliers trimmed


def test_bootstrap_interval_brackets_the_statistic_and_is_reproducible():
    values = [10.0, 12.0, 9.0, 30.0, 11.0]
    low, high = bootstrap_ci(values, lambda a, axis=-1: np.mean(a, axis=axis))
    assert min(values) <= low < np.mean(values) < high <= max(values)
    assert bootstrap_ci(values, iqm) == bootstrap_ci(values, iqm)  # fixed resampling seed
    assert bootstrap_ci([5.0, 5.0, 5.0], iqm) == (5.0, 5.0)
    summary = summarize_returns(values)
    assert summary["mean"] == pytest.approx(14.4) and summary["n"] == 5


def test_learning_curve_band_on_a_shared_grid():
    metrics = [{"records": [{"timestep": t, "reward": r} for t, r in zip((100, 200, 300), rewards)]}
               for rewards in ([None, 1.0, 2.0], [None, 3.0, 4.0], [None, 5.0, 9.0])]
    curves = learning_curves(metrics)
    assert curves["timestep"] == [100, 200, 300]
    assert curves["mean"] == [None, 3.0, 5.0]
    assert curves["ci95_low"][2] >= 2.0 and curves["ci95_high"][2] <= 9.0
    assert curves["ci95_low"][2] < 5.0 < curves["ci95_high"][2]


def test_learning_curve_band_equals_the_direct_bootstrap():
    """The weighted-sum bootstrap gives what resampling seeds and taking nanmean over them gives."""
    rng = np.random.default_rng(3)
    curves = rng.normal(size=(4, 30)) * 50
    curves[0, :5] = np.nan  # seeds finish their first episode at different steps
    curves[2, :9] = np.nan
    curves[:, 0] = np.nan  # no seed has an episode yet
    metrics = [{"records": [{"timestep": 10 * (j + 1), "reward": None if np.isnan(v) else float(v)}
                            for j, v in enumerate(row)]} for row in curves]
    picks = np.random.default_rng(0).integers(0, 4, size=(BOOTSTRAP_SAMPLES, 4))  # the function's own draws
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        means = np.nanmean(curves[picks], axis=1)
        low, high = np.nanpercentile(means, [2.5, 97.5], axis=0)
        mean = np.nanmean(curves, axis=0)
    band = learning_curves(metrics)
    as_array = lambda values: np.array([np.nan if v is None else v for v in values])  # noqa: E731
    np.testing.assert_allclose(as_array(band["mean"]), mean, rtol=1e-12)
    np.testing.assert_allclose(as_array(band["ci95_low"]), low, rtol=1e-12)
    np.testing.assert_allclose(as_array(band["ci95_high"]), high, rtol=1e-12)
    assert band["mean"][0] is None and band["ci95_low"][0] is None


def test_failed_seed_is_one_line_and_keeps_the_others(tmp_path):
    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 400\neval_episodes = 2\n")
    blocked = tmp_path / "results" / "sweeps" / "tiny" / "experiments" / "a2c_seed1"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where seed 1's experiment directory would go")
    proc = run_cli("sweep", "--algo", "a2c", "--seeds", "0", "1", "--steps", "400", "--config", "tiny.toml",
                   "--jobs", "1", cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "INFO" not in line]  # the log names seed 0 done
    assert len(errors) == 1 and errors[0].startswith("jaxrl_lander: sweep failed: 1 of 2 seeds failed (1); seed 1:")
    seed0 = blocked.parent / "a2c_seed0" / "a2c_seed0_results.json"
    assert json.loads(seed0.read_text())["status"] == "completed"
    assert not (blocked.parents[1] / "summary.json").exists()


def test_sweep_refuses_duplicate_seeds(tmp_path):
    proc = run_cli("sweep", "--algo", "ppo", "--seeds", "1", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "duplicates" in proc.stderr


def test_sigterm_to_a_sweep_stops_every_seed_resumably_and_a_rerun_finishes(tmp_path):
    """The signal goes on to the seeds' processes (they used to run on after the sweep had gone), each saves a
    checkpoint and an interrupted results JSON, and running the same sweep again continues them."""
    import signal
    import subprocess
    import sys
    import time

    from jaxrl_lander.claim import ExperimentLock
    from jaxrl_lander.files import ExperimentPaths

    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 200\neval_episodes = 2\n")
    args = ["sweep", "--algo", "a2c", "--seeds", "0", "1", "--steps", "3000", "--config", "tiny.toml", "--set",
            "gamma=0.95", "--jobs", "2"]
    out = tmp_path / "results" / "sweeps" / "tiny_gamma=0.95"  # named after the config and the --set items
    sweep = subprocess.Popen([sys.executable, "-m", "jaxrl_lander", *args], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not all((out / "experiments" / f"a2c_seed{s}" / "checkpoints" / "200").is_dir() for s in (0, 1)):
        assert sweep.poll() is None and time.monotonic() < deadline, "the seeds did not reach step 200"
        time.sleep(0.2)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == ("jaxrl_lander: sweep tiny_gamma=0.95 stopped by SIGTERM; its seeds saved"
                                            " where they were: run it again to continue")
    for seed in (0, 1):
        paths = ExperimentPaths.of(out, "a2c", seed)
        ExperimentLock(paths).acquire().release()  # no seed's process is left running
        assert json.loads(paths.results.read_text())["status"] == "interrupted"

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    per_seed = [json.loads(ExperimentPaths.of(out, "a2c", seed).results.read_text()) for seed in (0, 1)]
    assert all(r["status"] == "completed" and r["resumed_from_timestep"] >= 200 for r in per_seed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["final_evaluation"]["n"] == 2
    assert summary["hyperparameters"]["gamma"] == 0.95 and summary["hyperparameters"]["eval_episodes"] == 2
    assert summary["final_evaluation"]["values"] == [r["evaluation"]["mean"] for r in per_seed]
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every seed trained from the config the sweep resolved once and kept beside its results
    kept = load_config(out / "config.toml", "a2c", {"seed": 0})
    assert kept == load_config(tmp_path / "tiny.toml", "a2c", {"seed": 0, "total_timesteps": 3000, "gamma": 0.95})
    assert all(r["hyperparameters"] == {**kept.to_dict(), "seed": r["seed"]} for r in per_seed)


def test_a_sweep_run_again_with_fewer_seeds_keeps_its_summary_whole_and_odd_paths_reach_its_seeds(tmp_path):
    """A summary covers every finished seed of its directory (one run of one seed no longer shrinks it), and a
    results directory whose name starts with '-' reaches the seeds' processes as a path, not an option."""
    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 400\neval_episodes = 1\n")
    sweep = ["sweep", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--results-dir=-odd", "--seeds"]
    first = run_cli(*sweep, "0", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "-odd/sweeps/tiny/summary.json").unlink()  # as a sweep killed before its summary leaves it
    again = run_cli(*sweep, "1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "-odd/sweeps/tiny/summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["final_evaluation"]["n"] == 2
    assert "tiny: 2 seeds" in again.stdout
