"""Tuning studies: the search space's refusals, pruning on the evaluations during training, a tiny study with two
workers at once, a worker killed mid-trial, and a study in a real PostgreSQL server."""

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import (SPACE, Postgres, child_env, experiment_paths, load_json, one_error, postgres_bin, run_cli,
                     study_json, tune_args, wait_for)

from jaxrl_lander.config import ConfigError, load_config, make_config
from jaxrl_lander.studies.tune_space import read_space

# What a test needs beyond the package's own dependencies (tune_space, which reads and checks a space, needs none):
# tune.py opens its study with Optuna (and SQLAlchemy, which Optuna brings); a postgresql:// URL is tried with
# psycopg, the tune extra's driver; the command's report draws its PNGs with matplotlib.
OPTUNA = pytest.mark.needs("optuna")
POSTGRES = pytest.mark.needs("optuna", "psycopg")
STUDY_CLI = pytest.mark.needs("optuna", "matplotlib")


# ---------------------------------------------------------------- the search space
@pytest.mark.parametrize("space,message", [
    ('[space]\nlr = { type = "float", low = 0.1, high = 1.0 }', "unknown config key 'lr'"),
    ('[space]\ngamma = { type = "float", low = 0.99, high = 0.99 }', "'gamma' range is empty"),
    ('[space]\ngamma = { type = "float", low = 0.999, high = 0.9 }', "'gamma' range is empty"),
    ('[space]\nent_coef = { type = "float", low = 0.0, high = 0.1, log = true }', "log range needs low > 0"),
    ('[space]\nent_coef = { type = "float", low = 0.0, high = inf }', "space.ent_coef.high is inf"),
    ('[space]\nn_steps = { type = "float", low = 4.0, high = 8.0 }', "'n_steps' is int"),
    ('[space]\ngamma = { type = "uniform", low = 0.9, high = 0.99 }', "type = \"float\", \"int\" or \"categorical\""),
    ('[space]\ngamma = { type = "float", low = 0.9 }', "has no 'high'"),
    ('[space]\ngamma = { type = "float", low = 0.9, high = 0.99, step = 0.01 }', "unknown field 'step'"),
    ('[space]\nn_steps = { type = "categorical", choices = [] }', "choices must be a non-empty list"),
    ('[space]\nn_steps = { type = "categorical", choices = [5, "ten"] }', "must be int"),
    ('[space]\nseed = { type = "int", low = 0, high = 9 }', "'seed' cannot be tuned"),
    ('[settings]\ngamma = 0.9\n[space]\ngamma = { type = "float", low = 0.9, high = 0.99 }', "both in [settings]"),
    ('[settings]\nlr = 0.1\n[space]\ngamma = { type = "float", low = 0.9, high = 0.99 }', "unknown config key 'lr'"),
    ("[settings]\ngamma = 0.9", "[space] names no key to tune"),
    ('algo = "ppo"\n[space]\ngamma = { type = "float", low = 0.9, high = 0.99 }', "not for 'a2c'"),
    ('[spaces]\ngamma = { type = "float", low = 0.9, high = 0.99 }', "unknown top-level key 'spaces'"),
    ('[space]\nlearning_rate = { type = "categorical", choices = [nan, 0.001] }',
     "space.learning_rate.choices[0] is nan: a search space holds finite numbers only"),
    ('[settings]\nent_coef = -inf\n[space]\ngamma = { type = "float", low = 0.9, high = 0.99 }',
     "settings.ent_coef is -inf"),
    ('[space]\nvf_coef = { type = "float", low = -1e308, high = 1e308 }', "'vf_coef' range must be finite"),
    ('[space]\nn_steps = { type = "int", low = 1, high = 9223372036854775807 }', "range must lie within +-2**53"),
    ('[space]\nn_steps = { type = "int", low = -9007199254740993, high = 8 }', "range must lie within +-2**53"),
    ('[space]\nenv_id = { type = "categorical", choices = ["evilmod:LunarLander-v3", "LunarLander-v3"] }',
     "'env_id' choice 'evilmod:LunarLander-v3' is refused: env_id must be one of"),
    ('[space]\noptimizer = { type = "categorical", choices = ["adam", "sgd"] }', "'optimizer' choice 'sgd' is refused"),
    # every value a field's own rule refuses, at either end of a range or as a choice, before any trial trains
    ('[space]\nn_steps = { type = "int", low = -5, high = 0 }',
     "'n_steps' low -5 is refused: n_steps must be a positive integer, got -5"),
    ('[space]\nhidden_size = { type = "int", low = 64, high = 100000 }',
     "'hidden_size' high 100000 is refused: hidden_size must be at most 8,192"),
    ('[space]\neval_interval = { type = "categorical", choices = [0, 5000] }',
     "'eval_interval' choice 0 is refused: tuning needs eval_interval > 0"),
])
def test_a_bad_space_is_refused_naming_the_problem(tmp_path, space, message):
    (tmp_path / "space.toml").write_text(space + "\n")
    with pytest.raises(ConfigError) as caught:
        read_space(tmp_path / "space.toml", "a2c")
    assert message in str(caught.value)


def test_the_shipped_spaces_are_valid_and_their_settings_make_configs():
    root = Path(__file__).resolve().parents[1] / "configs"
    for algo, name in (("ppo", "tune_ppo"), ("a2c", "tune_a2c"), ("ppo", "tune_ppo_continuous")):
        space = read_space(root / f"{name}.toml", algo)
        base = load_config(None, algo, space.settings)
        assert base.eval_interval > 0 and len(space.ranges) >= 5
        assert base.env_id == ("LunarLanderContinuous-v3" if name.endswith("continuous") else "LunarLander-v3")


# In this process (the cli fixture): each case ends in main() before any trial trains, and what only a whole process
# shows of a refused storage URL (its output at the interpreter's exit) is the test after this one.
@pytest.mark.parametrize("args,message", [
    pytest.param(["--storage", "postgresql://nobody@127.0.0.1:1/none"],
                 "cannot open the study storage postgresql://nobody@", marks=POSTGRES),
    pytest.param(["--storage", "nosuchdb://x"], "cannot open the study storage nosuchdb://x", marks=OPTUNA),
    pytest.param(["--set", "eval_interval=0"], "tuning needs eval_interval > 0", marks=OPTUNA),  # Study's own check
    (["--study", "a/b"], "--study must be a plain directory name"),
    (["--set", "vf_coef=0.5"], "--set vf_coef: that key is tuned by space.toml"),
    (["--space", "missing.toml"], "config file not found: missing.toml"),
    pytest.param(["--storage", "postgresql://u:S3cretPW@localhost:notaport/db"],
                 "cannot open the study storage postgresql://u:***@localhost:notaport/db: ValueError",
                 marks=OPTUNA),  # refused by the URL's parser, before any driver
    # a password the URL's parser cuts (a raw '@', a space): every piece of it is masked, wherever the driver names it
    pytest.param(["--storage", "postgresql://u:S3c@retPW@127.0.0.1:1/db"],
                 "cannot open the study storage postgresql://u:***@", marks=POSTGRES),
    pytest.param(["--storage", "postgresql://u:S3cret PW@127.0.0.1:1/db"],
                 "cannot open the study storage postgresql://u:***@", marks=POSTGRES),
    pytest.param(["--storage", "sqlite://"], "the study storage sqlite:// is in memory: no other worker could join it",
                 marks=OPTUNA),
    pytest.param(["--storage", ""], "--storage must not be empty", marks=OPTUNA),  # checked after tune.py's import
    (["--set", "hidden_size=0"], "the study's base config (space.toml [settings], with --config, --set, --steps):"
     " hidden_size must be a positive integer, got 0"),
    (["--study", "%2E%2E%2F%2E%2E%2Fescape"], "--study must be a plain directory name"),
    (["--results-dir", "qq?x"], "results directory"),
    (["--space", "nan.toml"], "nan.toml: space.gamma.choices[1] is nan"),
    (["--space", "huge.toml"], "'n_steps' range must lie within +-2**53"),
    (["--space", "cartpole.toml"], "cartpole.toml [space]: 'env_id' choice 'CartPole-v1' is refused: env_id must be one of"),
    (["--space", "wind.toml"], "wind.toml: wind_power low 5.0: wind_power needs enable_wind = true"),
    (["--space", "gravity.toml", "--backend", "envpool"], "gravity.toml: gravity low -11.0: env_backend 'envpool' has"
                                                          " no gravity"),
    (["--space", "logstd.toml"], "logstd.toml: log_std_init choice -1.0: log_std_init -1.0 needs a continuous env_id"),
])
def test_bad_tune_input_is_one_line_and_exit_2(cli, tmp_path, args, message):
    (tmp_path / "space.toml").write_text(SPACE)
    (tmp_path / "nan.toml").write_text('[space]\ngamma = { type = "categorical", choices = [0.99, nan] }\n')
    (tmp_path / "huge.toml").write_text('[space]\nn_steps = { type = "int", low = 5, high = 9223372036854775807 }\n')
    (tmp_path / "cartpole.toml").write_text(SPACE.replace("[space]", '[space]\nenv_id = { type = "categorical",'
                                                           ' choices = ["LunarLander-v3", "CartPole-v1"] }'))
    # env options a trial may draw that no trial could train with: refused before the study is written
    (tmp_path / "wind.toml").write_text(SPACE.replace("[space]", '[space]\nwind_power = { type = "float", low = 5.0,'
                                                        ' high = 15.0 }'))
    (tmp_path / "gravity.toml").write_text(SPACE.replace("[space]", '[space]\ngravity = { type = "float",'
                                                           ' low = -11.0, high = -5.0 }'))
    (tmp_path / "logstd.toml").write_text(SPACE.replace("[space]", '[space]\nlog_std_init = { type = "categorical",'
                                                          ' choices = [0.0, -1.0] }'))  # discrete actions: no log-std
    proc = cli(*tune_args(2), *args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "S3cretPW" not in proc.stderr and "S3c" not in proc.stderr and "retPW" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cartpole.toml", "gravity.toml", "huge.toml", "logstd.toml",
                                                          "nan.toml", "space.toml", "wind.toml"]  # nothing written


# A process of its own: what a driver, a connection pool or a late thread writes as the interpreter exits reaches a
# child's stderr only; none of it may hold the password either.
@pytest.mark.slow
@pytest.mark.parametrize("url", [pytest.param("postgresql://u:S3cretPW@localhost:notaport/db", marks=OPTUNA),
                                 pytest.param("postgresql://u:S3c@retPW@127.0.0.1:1/db", marks=POSTGRES),
                                 pytest.param("postgresql://u:S3cret PW@127.0.0.1:1/db", marks=POSTGRES)])
def test_a_refused_storage_url_keeps_its_password_out_of_a_whole_process(tmp_path, url):
    (tmp_path / "space.toml").write_text(SPACE)
    proc = run_cli(*tune_args(2), "--storage", url, cwd=tmp_path)
    one_error(proc, "cannot open the study storage postgresql://u:***@")
    for piece in ("S3cretPW", "S3c", "retPW"):
        assert piece not in proc.stderr and piece not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.toml"]  # nothing written


# ---------------------------------------------------------------- pruning
@pytest.mark.slow
@OPTUNA
def test_a_pruned_trial_stops_at_the_evaluation_it_was_judged_on(tmp_path):
    import optuna

    from jaxrl_lander import train
    from jaxrl_lander.studies.tune import Pruning

    config = make_config("a2c", {"total_timesteps": 1_000, "checkpoint_interval": 250, "eval_interval": 250,
                                 "eval_interval_episodes": 1, "eval_episodes": 2})
    kept = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner()).ask()
    results = train(config, tmp_path / "kept", progress_bar=False, watch=Pruning(kept))
    during = [e["mean"] for e in results.evaluations_during_training]
    steps = [e["timestep"] for e in results.evaluations_during_training]  # at the vector step reaching 250, ...
    assert results.status == "completed" and steps == [256, 504, 752, 1_000]
    # What the pruner saw at each evaluation: the running mean of the evaluations so far (the final one is not)
    running = [sum(during[:k + 1]) / (k + 1) for k in range(4)]
    assert kept.storage.get_trial(kept._trial_id).intermediate_values == pytest.approx(
        dict(zip(steps, running)))

    doomed = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9)).ask()
    results = train(config, tmp_path / "doomed", progress_bar=False, watch=Pruning(doomed))
    assert results.status == "interrupted" and results.reason == "pruned by the study at step 256"
    assert results.stop == "watch"  # what the study reads to call the trial pruned
    assert results.timestep == 256 and results.evaluation is None
    assert (experiment_paths(tmp_path / "doomed", "a2c", 42).checkpoints / "256").is_dir()  # a stop checkpoint


@pytest.mark.slow
@pytest.mark.needs("optuna", "envpool")
def test_vectorised_agents_are_pruned_together_on_the_iqm_of_their_running_objectives(tmp_path):
    import optuna

    from jaxrl_lander import train_agents
    from jaxrl_lander.studies.sweep import iqm
    from jaxrl_lander.studies.tune import Pruning

    configs = [make_config("a2c", {"total_timesteps": 512, "checkpoint_interval": 128, "eval_interval": 128,
                                   "eval_interval_episodes": 1, "eval_episodes": 2, "env_backend": "envpool",
                                   "seed": seed}) for seed in (0, 1, 2)]
    kept = optuna.create_study(direction="maximize").ask()
    runs = train_agents(configs, [tmp_path / "kept"] * 3, progress_bar=False, watch=Pruning(kept))
    running = [[sum(e["mean"] for e in r.evaluations_during_training[:k + 1]) / (k + 1) for k in range(4)]
               for r in runs]
    steps = [e["timestep"] for e in runs[0].evaluations_during_training]
    reported = kept.storage.get_trial(kept._trial_id).intermediate_values
    assert reported == pytest.approx({t: float(iqm([r[k] for r in running])) for k, t in enumerate(steps)})

    doomed = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9)).ask()
    runs = train_agents(configs, [tmp_path / "doomed"] * 3, progress_bar=False, watch=Pruning(doomed))
    # all stopped at one step: the end of the compiled rollout that played the judged evaluation's step
    assert {(r.status, r.stop, r.reason, r.timestep) for r in runs} == {(
        "interrupted", "watch", f"pruned by the study at step {steps[0]}", 160)}


@pytest.mark.slow
@pytest.mark.needs("optuna", "matplotlib", "envpool")
def test_a_trial_of_several_seeds_scores_their_iqm(tmp_path):
    (tmp_path / "space.toml").write_text(SPACE)
    proc = run_cli(*tune_args(1, "--seeds", "3", "4", "--backend", "envpool"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (trial,) = study_json(tmp_path)["trials"]
    values = []
    for seed, experiment in zip((3, 4), trial["experiments"]):
        results = load_json(tmp_path / experiment / f"a2c_seed{seed}_results.json")
        values.append(sum(e["mean"] for e in results["evaluations_during_training"]) / 4)
    assert trial["seed_values"] == pytest.approx(values) and trial["value"] == pytest.approx(sum(values) / 2)


# ---------------------------------------------------------------- whole studies
@pytest.mark.slow
@STUDY_CLI
def test_two_workers_run_exactly_the_studys_trials_and_its_best_config_trains(tmp_path):
    (tmp_path / "space.toml").write_text(SPACE)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "jaxrl_lander", *tune_args(4)]
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outs]
    study = study_json(tmp_path)
    trials = study["trials"]
    counted = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(counted) == 4 and study["trials_counted"] == 4
    assert all(t["state"] == "FAIL" and "surplus" in t for t in trials if t not in counted)
    assert all(t["duration_seconds"] > 0 and set(t["params"]) == {"learning_rate", "n_steps", "vf_coef"}
               for t in counted)
    # Each complete trial's value is the mean of its run's evaluations during training.
    for t in counted:
        if t["state"] == "COMPLETE":
            results = load_json(tmp_path / t["experiments"][0] / "a2c_seed42_results.json")
            assert t["value"] == pytest.approx(sum(e["mean"] for e in results["evaluations_during_training"]) / 4)
    best = max((t for t in counted if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    assert study["best"]["number"] == best["number"]
    best_config = load_config(tmp_path / "results/tuning/space/best.toml")
    assert best_config.learning_rate == best["params"]["learning_rate"] and best_config.seed == 42  # seed omitted
    # best.toml trains as it is
    proc = subprocess.run([sys.executable, "-m", "jaxrl_lander", "train", "--algo", "a2c", "--seed", "7", "--config",
                           "results/tuning/space/best.toml", "--quiet"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for png in ("history.png", "importances.png"):
        assert (tmp_path / "results/tuning/space" / png).read_bytes()[:4] == b"\x89PNG"


def stale_in_its_storage(root: Path, number: int, heartbeat: int, timeout: float = 60) -> None:
    """Wait until study `space`'s SQLite storage under `root`, opened as tune.py opens it (a heartbeat every
    `heartbeat` seconds, a grace period of three of them), reports trial `number` stale: still RUNNING, its last heartbeat
    older than the grace period by the storage's own clock. Those are the trials the next worker fails and retries
    (optuna.storages.fail_stale_trials asks the same question)."""
    import optuna
    from optuna.trial import TrialState

    from jaxrl_lander.studies.tune_storage import open_storage

    with warnings.catch_warnings():  # its heartbeat and retry arguments are experimental (tune.py says so too)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = open_storage(None, root / "results/tuning/space/study.db", heartbeat)
    try:
        study_id = storage.get_study_id_from_name("space")
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        assert storage.get_trial(trial_id).state == TrialState.RUNNING  # killed mid-trial: nobody ended it
        wait_for(lambda: trial_id in storage._get_stale_trial_ids(study_id), f"trial {number} stale in its storage",
                 timeout=timeout)
    finally:
        storage.remove_session()
        storage.engine.dispose()


@pytest.mark.slow
@STUDY_CLI
def test_a_stopped_or_killed_trial_is_retried_from_its_checkpoints(tmp_path):
    (tmp_path / "space.toml").write_text(SPACE)
    args = tune_args(2, "--heartbeat", "1", "--steps", "2000")  # room for the stop, then for the kill
    proc = run_cli(*args, cwd=tmp_path, point="interrupt:504")  # Ctrl-C inside trial 0, at its step-504 checkpoint
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 130 and "stopped during trial 0, which is retried" in lines[-1], proc.stderr
    states = {t["number"]: t["state"] for t in study_json(tmp_path)["trials"]}
    assert states == {0: "FAIL", 1: "WAITING"}  # the retry is queued at once
    proc = run_cli(*args, cwd=tmp_path, point="rollout:20")  # the retry killed 20 vector steps after its resume
    assert proc.returncode == -signal.SIGKILL
    stale_in_its_storage(tmp_path, 1, heartbeat=1)  # three missed heartbeats, as the storage itself tells
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trials = {t["number"]: t for t in study_json(tmp_path)["trials"]}
    assert [trials[n]["state"] for n in sorted(trials)] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]  # 2 counted
    assert trials[1]["retry_of"] == trials[2]["retry_of"] == 0 and trials[3]["retry_of"] is None
    # each attempt says why it failed: the stop, then the kill (no heartbeat); the retry that completed, nothing
    assert trials[0]["failure"].startswith("Interrupted: stopped by SIGINT")
    assert trials[1]["failure"] == "its worker stopped sending heartbeats (killed, or stalled for three of them)"
    assert "failure" not in trials[2]
    assert trials[2]["params"] == trials[1]["params"] == trials[0]["params"]
    experiment = trials[2]["experiments"][0]
    results = load_json(tmp_path / experiment / "a2c_seed42_results.json")
    # resumed, in trial 0's directory, from the stop's checkpoint (the kill came before the next one): the
    # checkpoint at 504 itself when the stop was seen as it was committed (saved in the loop's thread)
    assert "trial_0000" in experiment and results["resumed_from_timestep"] >= 504
    assert results["status"] == "completed"
    # the pruner saw the retry's whole curve, the evaluations before its resume included
    assert min(map(int, trials[2]["intermediate_values"])) < results["resumed_from_timestep"]


@OPTUNA
def test_a_space_whose_every_draw_is_refused_still_ends(tmp_path):
    from jaxrl_lander.studies.tune import Study
    from jaxrl_lander.studies.tune_space import read_space

    (tmp_path / "space.toml").write_text('[settings]\neval_interval = 1000\n'
                                         '[space]\nbatch_size = { type = "categorical", choices = [3000, 5000] }\n')
    space = read_space(tmp_path / "space.toml", "ppo")
    study = Study("refused", load_config(None, "ppo", space.settings), space, 3, tmp_path / "refused", heartbeat=1)
    study.run()
    trials = study.report()["trials"]
    assert [t["state"] for t in trials] == ["PRUNED"] * 3
    assert all("must divide" in t["refused"] for t in trials)
    # joining the study with another space is refused, naming what differs
    other = read_space(tmp_path / "space.toml", "ppo")
    other.ranges["batch_size"]["choices"] = [3000]
    with pytest.raises(ConfigError, match="was made with another space: give another --study"):
        Study("refused", load_config(None, "ppo", space.settings), other, 3, tmp_path / "refused", heartbeat=1)


# ---------------------------------------------------------------- PostgreSQL
@pytest.fixture
def postgres_url(postgres):
    return postgres.url()

@pytest.mark.needs("optuna")
def test_a_study_report_without_matplotlib_has_no_pictures_and_no_error(tmp_path, monkeypatch, caplog):
    from jaxrl_lander.studies.tune_report import _plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as where the plot extra is not installed
    _plots(None, 5, tmp_path)  # returns before it reads the study
    assert list(tmp_path.iterdir()) == []
    assert "no history.png or importances.png: matplotlib (the plot extra) is not installed" in caplog.text

@pytest.mark.slow
def test_a_server_left_by_a_killed_test_process_is_stopped_by_the_next():
    """A suite killed with SIGKILL leaves its PostgreSQL server running (the server is a session of its own); the
    next server started stops and removes it."""
    bindir = postgres_bin()
    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r}); from helpers import Postgres,"
            " postgres_bin; print(Postgres(postgres_bin()).data, flush=True); time.sleep(600)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=child_env())
    data = Path(owner.stdout.readline().strip())
    owner.kill()
    owner.wait()
    server = int((data / "db" / "postmaster.pid").read_text().split()[0])

    def running() -> bool:  # a process that has exited, reaped or not (a zombie) runs no more
        try:
            return Path(f"/proc/{server}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
        except FileNotFoundError:
            return False

    assert running()  # its test process gone, the server runs on
    Postgres.stop_orphans(bindir)
    assert not data.exists() and not running()


@pytest.mark.slow
@pytest.mark.needs("optuna", "psycopg", "matplotlib")
def test_a_study_in_postgresql(tmp_path, postgres_url):
    import optuna

    (tmp_path / "space.toml").write_text(SPACE)
    proc = run_cli(*tune_args(2, "--storage", postgres_url, "--study", "pg"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trials = study_json(tmp_path, "pg")["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    assert not (tmp_path / "results/tuning/pg/study.db").exists()  # the study lives in the server
    stored = optuna.load_study(study_name="pg", storage=postgres_url)
    assert [t.params for t in stored.trials] == [t["params"] for t in trials]
    assert stored.user_attrs["identity"]["space"] == study_json(tmp_path, "pg")["search_space"]
