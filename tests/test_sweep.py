"""Sweep statistics (IQM, bootstrap intervals, learning-curve bands), the summary of two short real runs trained
in this process, refusals; and (slow) real sweeps, whose seeds are child processes: a seed that fails and a rerun
for fewer seeds, a SIGTERM and a rerun. A sweep's summary draws its plot, so those need matplotlib."""

import json
import sys

import numpy as np
import pytest
from helpers import experiment_paths, load_json, run_cli, train_run, wait_for

from jaxrl_lander.config import load_config, make_config
from jaxrl_lander.studies.sweep import BOOTSTRAP_SAMPLES, bootstrap_ci, iqm, learning_curves, summarize_returns, summarize_sweep

PNG = b"\x89PNG\r\n\x1a\n"


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


def test_a_summary_covers_every_finished_seed_of_its_directory_with_their_values(tmp_path, monkeypatch, caplog):
    """Seeds 0 and 1 trained where a sweep's seeds train (A2C, 1,000 steps each, in this process): the summary of
    seed 1 alone covers seed 0's finished run too, and holds their final evaluations and training curves."""
    settings = {"total_timesteps": 1_000, "checkpoint_interval": 1_000, "eval_episodes": 2}
    runs = [train_run(make_config("a2c", {**settings, "seed": seed}), tmp_path, progress_bar=False) for seed in (0, 1)]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as where the plot extra is not installed
    summary = summarize_sweep(runs[1].config, [1], tmp_path)
    assert not (tmp_path / "learning_curves.png").exists()  # the summary stands without its picture
    assert "no learning_curves.png: matplotlib (the plot extra) is not installed" in caplog.text
    assert summary["seeds"] == [0, 1] and load_json(tmp_path / "summary.json")["seeds"] == [0, 1]
    assert summary["total_timesteps"] == 1_000 and summary["evaluation_episodes"] == 2
    assert summary["hyperparameters"] == {k: v for k, v in runs[0].config.to_dict().items() if k != "seed"}
    final = [run.results.evaluation["mean"] for run in runs]
    assert summary["final_evaluation"]["values"] == final and summary["final_evaluation"]["n"] == 2
    assert summary["final_evaluation"]["mean"] == pytest.approx(np.mean(final))
    assert summary["seeds_solved_at_end"] == 0 and summary["first_solved_timestep"] == [None, None]
    assert summary["first_solved_training_seconds"] == [run.results.solved["training_seconds"] for run in runs]
    assert summary["training_time_seconds"] == [run.results.training_time_seconds for run in runs]
    rewards = [{r["timestep"]: r["reward"] for r in load_json(run.paths.metrics)["records"]} for run in runs]
    curves = summary["learning_curves"]
    grid = [8 * -(-t // 8) for t in range(100, 1_001, 100)]  # the first vector step (8 envs) past each 100
    assert curves["timestep"] == sorted(rewards[0]) == sorted(rewards[1]) == grid
    for t, mean in zip(curves["timestep"], curves["mean"]):
        seen = [r[t] for r in rewards if r[t] is not None]  # the seeds with a finished episode by step t
        assert mean == (pytest.approx(np.mean(seen)) if seen else None)
    assert curves["mean"][-1] is not None  # episodes did end

    monkeypatch.undo()  # matplotlib back, where it is installed: the same summary, and its picture
    pytest.importorskip("matplotlib", reason="the summary's picture needs the plot extra")
    assert summarize_sweep(runs[1].config, [1], tmp_path) == summary
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == PNG


def test_sweep_refuses_duplicate_seeds(cli, tmp_path):
    proc = cli("sweep", "--algo", "ppo", "--seeds", "1", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "duplicates" in proc.stderr


@pytest.mark.slow
@pytest.mark.needs("matplotlib")  # the summary's plot
def test_a_failed_seed_is_one_line_and_a_rerun_for_it_alone_sums_up_every_seed_through_odd_paths(tmp_path):
    """A seed that fails (a file where its experiment directory would go) is one line of the sweep's error, and
    the other seed's run stays. Run again for that seed alone, the sweep's summary covers every finished seed of its
    directory (one run of one seed does not shrink it). A results directory whose name starts with '-' reaches the
    seeds' processes as a path, not an option."""
    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 400\neval_episodes = 1\n")
    sweep = ["sweep", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--results-dir=-odd", "--seeds"]
    blocked = tmp_path / "-odd" / "sweeps" / "tiny" / "experiments" / "a2c_seed1"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where seed 1's experiment directory would go")
    proc = run_cli(*sweep, "0", "1", "--jobs", "1", cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "INFO" not in line]  # the log names seed 0 done
    assert len(errors) == 1 and errors[0].startswith("jaxrl_lander: sweep failed: 1 of 2 seeds failed (1); seed 1:")
    seed0 = blocked.parent / "a2c_seed0" / "a2c_seed0_results.json"
    assert json.loads(seed0.read_text())["status"] == "completed"
    assert not (blocked.parents[1] / "summary.json").exists()

    blocked.unlink()
    again = run_cli(*sweep, "1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "-odd/sweeps/tiny/summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["final_evaluation"]["n"] == 2
    assert "tiny: 2 seeds" in again.stdout


@pytest.mark.slow
@pytest.mark.needs("matplotlib")  # the summary's plot
def test_sigterm_to_a_sweep_stops_every_seed_resumably_and_a_rerun_finishes(tmp_path):
    """The signal goes on to the seeds' processes (they used to run on after the sweep had gone), each saves a
    checkpoint and an interrupted results JSON, and running the same sweep again continues them."""
    import signal
    import subprocess
    import sys

    from jaxrl_lander.storage.claim import ExperimentLock

    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 200\neval_episodes = 2\n")
    args = ["sweep", "--algo", "a2c", "--seeds", "0", "1", "--steps", "3000", "--config", "tiny.toml", "--set",
            "gamma=0.95", "--jobs", "2"]
    out = tmp_path / "results" / "sweeps" / "tiny_gamma=0.95"  # named after the config and the --set items
    sweep = subprocess.Popen([sys.executable, "-m", "jaxrl_lander", *args], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: all((out / "experiments" / f"a2c_seed{s}" / "checkpoints" / "200").is_dir() for s in (0, 1)),
             "both seeds' checkpoints at step 200", sweep)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == ("jaxrl_lander: sweep tiny_gamma=0.95 stopped by SIGTERM; its seeds saved"
                                            " where they were: run it again to continue")
    for seed in (0, 1):
        paths = experiment_paths(out, "a2c", seed)
        ExperimentLock(paths).acquire().release()  # no seed's process is left running
        assert json.loads(paths.results.read_text())["status"] == "interrupted"

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    per_seed = [json.loads(experiment_paths(out, "a2c", seed).results.read_text()) for seed in (0, 1)]
    assert all(r["status"] == "completed" and r["resumed_from_timestep"] >= 200 for r in per_seed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["final_evaluation"]["n"] == 2
    assert summary["hyperparameters"]["gamma"] == 0.95 and summary["hyperparameters"]["eval_episodes"] == 2
    assert summary["final_evaluation"]["values"] == [r["evaluation"]["mean"] for r in per_seed]
    assert (out / "learning_curves.png").read_bytes()[:8] == PNG
    # every seed trained from the config the sweep resolved once and kept beside its results
    kept = load_config(out / "config.toml", "a2c", {"seed": 0})
    assert kept == load_config(tmp_path / "tiny.toml", "a2c", {"seed": 0, "total_timesteps": 3000, "gamma": 0.95})
    assert all(r["hyperparameters"] == {**kept.to_dict(), "seed": r["seed"]} for r in per_seed)


def test_a_sweep_or_study_made_before_a_config_key_existed_goes_on(tmp_path):
    """A sweep's config.toml or a study's stored base config without a key added since (the env options) counts
    that key as its default: the same command continues it; a config that really differs is still refused."""
    import optuna

    from jaxrl_lander.config import ConfigError, config_to_toml
    from jaxrl_lander.studies.sweep import _config_text
    from jaxrl_lander.studies.tune_storage import claim_identity, open_storage

    config = make_config("ppo", {"total_timesteps": 2048})
    text = config_to_toml(config, omit=("seed",))
    new_keys = ("gravity", "enable_wind", "wind_power", "turbulence_power")
    (tmp_path / "config.toml").write_text("".join(line + "\n" for line in text.splitlines()
                                                  if not line.startswith(new_keys)))
    assert _config_text(config, tmp_path) == text
    with pytest.raises(ConfigError, match="exists with another config"):
        _config_text(make_config("ppo", {"total_timesteps": 2048, "enable_wind": True}), tmp_path)

    storage = open_storage(None, tmp_path / "study.db", 30)
    optuna.create_study(study_name="s", storage=storage)
    study_id = storage.get_study_id_from_name("s")
    held = {k: v for k, v in config.to_dict().items() if k not in new_keys}
    assert claim_identity(storage, study_id, {"base_config": held, "seeds": [0]}) == []  # made by the old code
    windy = make_config("ppo", {"total_timesteps": 2048, "enable_wind": True})
    for now, differs in ((config, []), (windy, ["base_config"])):
        same = {"base_config": lambda saved, now=now: not now.differences(saved)}
        assert claim_identity(storage, study_id, {"base_config": now.to_dict(), "seeds": [0]}, same) == differs
