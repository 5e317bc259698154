"""No second command destroys a run: one writer per experiment (an OS lock), no silent re-run over an existing
experiment, and an overwrite that replaces the old experiment only once it has committed a checkpoint."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import probe_envs  # noqa: F401  (registers the probe envs)
import pytest
from helpers import TINY_TOML as TINY, child_env, cli_command, experiment_paths, load_json, run_cli, snapshot

from jaxrl_lander import train
from jaxrl_lander.storage.checkpoint import CheckpointStore
from jaxrl_lander.storage.claim import ExperimentLock, recover_interrupted_overwrite
from jaxrl_lander.config import make_config
from jaxrl_lander.config.errors import ConfigError, ExperimentInUse, TrainingFailed
from jaxrl_lander.storage.files import ExperimentPaths

HERE = Path(__file__).parent
EXP = Path("results/experiments/a2c_seed42")


# A plain re-run is refused, naming --resume and --overwrite: the bad-input battery of test_cli.py.


@pytest.mark.slow
def test_overwrite_killed_before_its_first_checkpoint_leaves_the_old_experiment_whole(finished_copy):
    root = finished_copy
    before = snapshot(root / EXP)
    killed = run_cli("train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--set", "gamma=0.9",
                     "--overwrite", "--quiet", cwd=root, point="checkpoint:200")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert snapshot(root / EXP) == before  # the staged run died before committing: the old one is untouched
    assert (root / "results/experiments/.a2c_seed42.new").is_dir()

    proc = run_cli("train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--set", "gamma=0.9",
                   "--overwrite", "--quiet", cwd=root)
    assert proc.returncode == 0, proc.stderr
    results = load_json(root / EXP / "a2c_seed42_results.json")
    assert results["hyperparameters"]["gamma"] == 0.9 and results["status"] == "completed"
    assert results["artifacts"]["experiment_dir"] == str(EXP)
    assert sorted(p.name for p in (root / "results/experiments").iterdir()) == [".a2c_seed42.lock", "a2c_seed42"]
    assert CheckpointStore(root / EXP / "checkpoints").all_steps() == [200, 400]


@pytest.mark.filterwarnings("ignore:.*reward is a NaN")
def test_overwrite_that_fails_before_a_checkpoint_keeps_the_old_experiment(tmp_path):
    config = make_config("ppo", {"env_id": "JaxrlLanderTest/NanReward-v0", "num_envs": 8, "n_steps": 16,
                                 "batch_size": 32, "total_timesteps": 1024, "checkpoint_interval": 512})
    healthy = make_config("ppo", {"env_id": "JaxrlLanderTest/NanReward-v0", "num_envs": 8, "n_steps": 16,
                                  "batch_size": 32, "total_timesteps": 128, "checkpoint_interval": 64,
                                  "learning_rate": 1e-9, "eval_episodes": 1})
    paths = ExperimentPaths.of(tmp_path, config)
    paths.root.mkdir(parents=True)
    (paths.root / "notes.txt").write_text("an earlier experiment's file\n")
    before = snapshot(paths.root)
    with pytest.raises(TrainingFailed, match="previous experiment at .* is kept as it was"):
        train(config, tmp_path, overwrite=True)
    assert snapshot(paths.root) == before
    assert not (tmp_path / "experiments" / ".ppo_seed42.new").exists()
    with pytest.raises(ConfigError, match="already holds an experiment"):
        train(healthy, tmp_path)


def test_interrupted_overwrite_swaps_are_finished_or_undone(tmp_path):
    paths = experiment_paths(tmp_path, "a2c", 1)
    staged, old = (paths.root.parent / f".a2c_seed1.{s}" for s in ("new", "old"))

    def make(directory, text):
        directory.mkdir(parents=True)
        (directory / "which").write_text(text)

    make(old, "old")  # killed after moving the old experiment aside, before moving the new one in
    make(staged, "new")
    recover_interrupted_overwrite(paths)
    assert (paths.root / "which").read_text() == "new" and not old.exists() and not staged.exists()

    make(old, "stale old")  # killed after the swap, before deleting the old one
    recover_interrupted_overwrite(paths)
    assert (paths.root / "which").read_text() == "new" and not old.exists()

    make(staged, "unfinished")  # killed before the first checkpoint
    recover_interrupted_overwrite(paths)
    assert (paths.root / "which").read_text() == "new" and not staged.exists()


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    paths = experiment_paths(tmp_path, "ppo", 3)
    with ExperimentLock(paths):
        with pytest.raises(ExperimentInUse, match=f"ppo_seed3 is in use by process {os.getpid()} "):
            ExperimentLock(paths).acquire()
    ExperimentLock(paths).acquire().release()  # released on exit

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from jaxrl_lander.storage.claim import ExperimentLock; from jaxrl_lander.storage.files import "
        "ExperimentPaths; from jaxrl_lander.config import make_config; ExperimentLock(ExperimentPaths.of("
        f"{str(tmp_path)!r}, make_config('ppo', {{'seed': 3}}))).acquire(); "
        "print('locked', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ExperimentInUse, match=f"process {holder.pid} "):
        ExperimentLock(paths).acquire()
    holder.kill()  # SIGKILL: the kernel releases the lock, no stale lock file
    holder.wait()
    ExperimentLock(paths).acquire().release()


# A second command on a running experiment: test_stop_and_fail.py, with the SIGTERM that then stops it.


@pytest.mark.slow
def test_ctrl_c_during_an_overwrite_before_its_first_checkpoint_keeps_the_old_experiment(finished_copy):
    """The stop checkpoint used to count as the overwrite's first and swap it in: a Ctrl-C meant to undo a mistaken
    --overwrite deleted the experiment it was meant to save."""
    root = finished_copy
    before = snapshot(root / EXP)
    proc = subprocess.Popen(cli_command("train", "--algo", "a2c", "--steps", "40000", "--config", "tiny.toml",
                                        "--set", "checkpoint_interval=20000", "--overwrite"),
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    for line in proc.stderr:  # progress lines: "step 4000/40000 ..."
        if " step " in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "before the overwrite's first checkpoint; the previous experiment at" in err.strip().splitlines()[-1]
    assert snapshot(root / EXP) == before
    assert not (root / "results/experiments/.a2c_seed42.new").exists()


def test_a_run_stopped_during_its_start_up_blocks_no_re_run(tmp_path):
    """Empty directories (what a Ctrl-C during start-up leaves) are not an experiment to protect."""
    from jaxrl_lander.storage.claim import holds_experiment

    paths = experiment_paths(tmp_path, "a2c", 42)
    (paths.checkpoints).mkdir(parents=True)
    assert not holds_experiment(paths)
    (paths.checkpoints / "200").mkdir()
    (paths.checkpoints / "200" / "state").write_text("x")
    assert holds_experiment(paths)


def test_reproduce_keeps_its_experiment_claimed_until_the_verdict_is_written(tmp_path, monkeypatch):
    """A train --resume of the same seed, tried while reproduce plays its second run, is refused: the verdict
    written afterwards stands beside the checkpoints, metrics and model of the run it judged."""
    from jaxrl_lander.studies import reproduce as module

    (tmp_path / "tiny.toml").write_text(TINY)
    tried = []

    def train_and_meddle(config, results_dir, **kwargs):
        if kwargs.get("claim") is None:  # the second run, in the scratch directory: the first one is done
            tried.append(run_cli("train", "--algo", "a2c", "--steps", "600", "--config", "tiny.toml", "--resume",
                                 "--quiet", cwd=tmp_path))
        return real_train(config, results_dir, **kwargs)

    real_train = module.train
    monkeypatch.setattr(module, "train", train_and_meddle)
    monkeypatch.chdir(tmp_path)
    config = make_config("a2c", {"total_timesteps": 400, "checkpoint_interval": 200, "eval_episodes": 2})
    results = module.reproduce(config, "results")
    assert tried[0].returncode == 2 and f"is in use by process {os.getpid()}" in tried[0].stderr, tried[0].stderr
    saved = load_json(EXP / "a2c_seed42_results.json")
    assert saved["timestep"] == results.timestep == 400 and saved["success_criteria"]["SC-004"]["passed"] is True
    assert CheckpointStore(EXP / "checkpoints").all_steps() == [200, 400]


def test_a_sweep_whose_seeds_are_still_written_by_orphans_exits_2(cli, tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    with ExperimentLock(experiment_paths(tmp_path / "results/sweeps/s", "a2c", 1)):  # as a killed sweep's seed
        proc = cli("sweep", "--algo", "a2c", "--seeds", "0", "1", "--steps", "400", "--config", "tiny.toml",
                       "--name", "s", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"jaxrl_lander: error: results/sweeps/s/experiments/a2c_seed1 is in use by process {os.getpid()}"
        f" ({' '.join(open(f'/proc/{os.getpid()}/cmdline').read().split(chr(0))).strip()[:300]}); wait for it to"
        " end or stop it"]
    assert not (tmp_path / "results/sweeps/s/experiments/a2c_seed0").exists()  # no seed started


def test_the_holder_of_a_lock_is_named_without_its_passwords(tmp_path):
    paths = experiment_paths(tmp_path, "ppo", 3)
    (tmp_path / "hold.py").write_text(
        "import sys, time; from jaxrl_lander.storage.claim import ExperimentLock; from jaxrl_lander.storage.files import "
        "ExperimentPaths; from jaxrl_lander.config import make_config; ExperimentLock(ExperimentPaths.of("
        f"{str(tmp_path)!r}, make_config('ppo', {{'seed': 3}}))).acquire(); "
        "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "hold.py", "--storage", "postgresql://alice:S3cretPW@db/optuna"],
                              cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExperimentInUse) as refused:
            ExperimentLock(paths).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert "postgresql://alice:***@db/optuna" in str(refused.value) and "S3cretPW" not in str(refused.value)


@pytest.mark.needs("matplotlib")  # the learning curve drawn again
def test_a_finished_run_resumed_checks_its_config_and_delivers_a_missing_model_again(cli, finished_copy):
    root = finished_copy
    resume = ["train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--resume", "--quiet"]
    before = snapshot(root / EXP)
    changed = cli(*resume, "--set", "gamma=0.5", cwd=root)
    assert changed.returncode == 2 and changed.stderr.strip().splitlines() == [
        f"jaxrl_lander: error: cannot resume {EXP}: config differs from the finished run's in gamma (0.99 there,"
        " 0.5 here)"]
    assert snapshot(root / EXP) == before
    (root / EXP / "a2c_seed42_learning_curve.png").unlink()  # as a kill between the results and the plot leaves
    shutil.rmtree(root / EXP / "a2c_seed42_model")  # removed by hand
    again = cli(*resume, cwd=root)
    assert again.returncode == 0, again.stderr
    assert (root / EXP / "a2c_seed42_model").is_dir() and (root / EXP / "a2c_seed42_learning_curve.png").is_file()
    assert load_json(root / EXP / "a2c_seed42_results.json")["success_criteria"]["SC-005"]["passed"] is True
    done = cli(*resume, cwd=root)
    assert done.returncode == 0 and "nothing to do" in done.stdout and "steps/s" not in done.stdout, done.stdout


def test_one_sweep_of_a_name_at_a_time(cli, tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "results/sweeps/s"
    with ExperimentLock(ExperimentPaths(root=out, name="s")):  # as another sweep of that name, running
        proc = cli("sweep", "--algo", "a2c", "--seeds", "0", "--steps", "400", "--config", "tiny.toml",
                       "--name", "s", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"jaxrl_lander: error: results/sweeps/s is in use by process {os.getpid()}"), lines
    assert not (out / "experiments").exists()


def test_a_resume_of_a_run_on_another_env_is_refused_and_names_it(tmp_path):
    """The env and its options name the experiment: --resume that leaves out or changes one finds no experiment.
    Where the same algorithm and seed ran on another env it is one line naming that run, not a fresh start."""
    from jaxrl_lander.config import ConfigError, make_config
    from jaxrl_lander.storage.claim import check_rerun
    from jaxrl_lander.storage.files import ExperimentPaths

    continuous = ExperimentPaths.of(tmp_path, make_config("ppo", {"seed": 7, "env_id": "LunarLanderContinuous-v3"}))
    continuous.root.mkdir(parents=True)
    (continuous.root / "ppo_continuous_seed7_metrics.jsonl").write_text("{}\n")
    (tmp_path / "experiments" / "a2c_seed7").mkdir()  # another algorithm: not named
    default = ExperimentPaths.of(tmp_path, make_config("ppo", {"seed": 7}))
    with pytest.raises(ConfigError) as caught:
        check_rerun(default, resume=True, overwrite=False)
    assert str(caught.value).startswith("--resume: no experiment ppo_seed7 to continue in ")
    assert "another env: ppo_continuous_seed7; give that run's env_id and env options" in str(caught.value)
    check_rerun(default, resume=False, overwrite=False)  # a new run of the default env: fine
    check_rerun(ExperimentPaths.of(tmp_path, make_config("ppo", {"seed": 8})), resume=True, overwrite=False)
    check_rerun(continuous, resume=True, overwrite=False)  # it exists: resumed as always
