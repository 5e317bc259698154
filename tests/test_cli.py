"""The command line: bad input gives one line and exit 2 and changes nothing; a tiny real run succeeds."""

import json
import shutil
import subprocess
import sys

import jax
import pytest
from helpers import load_json, run_cli, snapshot, validate

from jaxrl_lander.storage.schemas import EXPERIMENT_RESULTS


EXP = "results/experiments/a2c_seed42"
RESUME = ["train", "--algo", "a2c", "--steps", "600", "--config", "tiny.toml", "--resume"]


def _corrupt_checkpoint_metadata(root):
    (root / EXP / "checkpoints/400/metadata/metadata").write_text("garbage")


def _delete_checkpoint_state(root):
    shutil.rmtree(root / EXP / "checkpoints/400/state")


def _truncate_checkpoint_arrays(root):
    chunks = list((root / EXP / "checkpoints/400/state").glob("*/[0-9]*"))  # of its arrays, zarr without OCDBT
    assert chunks
    for f in chunks:
        f.write_bytes(f.read_bytes()[:10])


def _truncate_model_arrays(root):
    for f in (root / EXP / "a2c_seed42_model/params").rglob("d/*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:10])


def _corrupt(name, text):
    return lambda root: (root / EXP / name).write_text(text)


def _corrupt_without_journal(text):
    """An experiment written before the metrics journal, whose metrics JSON is damaged: resume reads the JSON."""
    def damage(root):
        (root / EXP / "a2c_seed42_metrics.jsonl").unlink()
        (root / EXP / "a2c_seed42_metrics.json").write_text(text)
    return damage


def _journal_short_of_the_checkpoint(root):
    journal = root / EXP / "a2c_seed42_metrics.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:2]))  # the metadata, step 200


def _killed_after_400(root):
    """As a run of more steps killed after its checkpoint at 400 leaves the experiment."""
    (root / EXP / "a2c_seed42_results.json").unlink()
    shutil.rmtree(root / EXP / "a2c_seed42_model")


def _sweep_of_another_config(root):
    (root / "results/sweeps/s").mkdir(parents=True)
    (root / "results/sweeps/s/config.toml").write_text("gamma = 0.9\n")


def _two_models(root):
    """A directory named after neither of the two models it holds."""
    shutil.copytree(root / EXP / "a2c_seed42_model", root / "mixed" / "a2c_seed42_model")
    shutil.copytree(root / EXP / "a2c_seed42_model", root / "mixed" / "copy_model")


def _remove_checkpoints(root):
    shutil.rmtree(root / EXP / "checkpoints")


def _checkpoints_a_file(root):
    _remove_checkpoints(root)
    (root / EXP / "checkpoints").write_text("not a directory\n")


EVIL_MODULE = "import pathlib\npathlib.Path('pwned').write_text('code ran')\n"  # the snapshot would show 'pwned'


def _evil_module(root):
    (root / "evilmod.py").write_text(EVIL_MODULE)


def _edit_json(name, **changes):
    """A damage that sets keys of a JSON file of the experiment (a checkpoint's metadata, the model's spec)."""
    def damage(root):
        path = root / EXP / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    damage.__name__ = f"{name.replace('/', '_')}_{'_'.join(changes)}"
    return damage


def _link_to_experiment(root):
    (root / "link").symlink_to(root / EXP)


def _experiment_a_file(root):
    shutil.rmtree(root / EXP)
    (root / EXP).write_text("a file where the experiment was\n")


def _windy_experiment(root):
    """The experiment of the finished one's config with wind, its own directory beside it."""
    shutil.copytree(root / EXP, root / "results/experiments/a2c_wind15.0-turb1.5_seed42")


def _model_spec_names_evil_module(root):
    _evil_module(root)
    _edit_json("a2c_seed42_model/policy/metadata", env_id="evilmod:LunarLander-v3")(root)


# (arguments, the one line's message, damage done to the existing experiment first)
BAD = [
    (["train", "--algo", "dqn"], "invalid choice: 'dqn'", None),
    (["train", "--algo", "ppo", "--steps", "0"], "steps must be a positive integer", None),
    (["train", "--algo", "ppo", "--steps", "-5"], "steps must be a positive integer", None),
    (["train", "--algo", "ppo", "--steps", "abc"], "steps must be an integer", None),
    (["train", "--algo", "ppo", "--steps", "1.5"], "steps must be an integer", None),
    (["train", "--algo", "ppo", "--seed", "-1"], "seed must be an integer >= 0", None),
    (["train", "--algo", "ppo", "--seed", "x"], "seed must be an integer", None),
    (["train", "--algo", "ppo", "--seed", "4294967296"], "seed must be below 2**32", None),
    (["train", "--algo", "ppo", "--config", "missing.toml"], "config file not found", None),
    (["train", "--algo", "ppo", "--config", "bad.toml"], "is not valid TOML", None),
    (["train", "--algo", "ppo", "--config", "unknown.toml"], "unknown config key 'lr'", None),
    (["train", "--algo", "ppo", "--config", "wrongtype.toml"], "must be float", None),
    (["train", "--algo", "ppo", "--config", "no_checkpoints.toml"], "checkpoint_interval must be a positive", None),
    (["train", "--algo", "ppo", "--config", "nan.toml"], "learning_rate must be a finite number, got nan", None),
    (["train", "--algo", "a2c", "--config", "ppo_only.toml"], "config for 'ppo', not for 'a2c'", None),
    (["train", "--algo", "a2c", "--config", "tiny.toml", "--set", "lr=1"], "unknown config key 'lr' in --set", None),
    (["train", "--algo", "a2c", "--set", "normalize_rewards=true", "--set", "reward_scale=0.1"],
     "normalize_rewards and reward_scale 0.1 both rescale", None),
    (["sweep", "--algo", "a2c", "--seeds", "0", "--set", "gamma"], "--set expects KEY=VALUE, got 'gamma'", None),
    (["train"], "the following arguments are required: --algo", None),
    (["sweep", "--algo", "a2c", "--seeds", "0", "--name", "../escape"], "--name must be a plain directory name", None),
    (["train", "--algo", "ppo", "--results-dir", "a_file/results"], "is not writable", None),
    (["evaluate", "nowhere"], "no trained model in nowhere", None),
    (["train", "--algo", "ppo", "--device", "quantum"], "invalid choice: 'quantum'", None),
    (RESUME[:-2] + ["lr.toml", "--resume"], "config differs from the checkpoint in learning_rate", None),
    (RESUME, "checkpoints/400 is unreadable", _corrupt_checkpoint_metadata),
    (RESUME, "checkpoints/400 is unreadable", _delete_checkpoint_state),
    (RESUME, "checkpoints/400 is unreadable", _truncate_checkpoint_arrays),
    (["evaluate", EXP], "a2c_seed42_model is unreadable", _truncate_model_arrays),
    (RESUME, "a2c_seed42_metrics.jsonl is unreadable", _corrupt("a2c_seed42_metrics.jsonl", '{"records": [\n')),
    (RESUME, "a2c_seed42_metrics.jsonl is unreadable", _corrupt("a2c_seed42_metrics.jsonl", "{}\n")),
    (RESUME, "a2c_seed42_metrics.jsonl is unreadable (ValueError: it reaches step 200, not the checkpoint's step"
     " 400)", _journal_short_of_the_checkpoint),
    (RESUME, "a2c_seed42_metrics.json is unreadable", _corrupt_without_journal('{"records": [')),
    (RESUME, "a2c_seed42_metrics.json is unreadable", _corrupt_without_journal("{}")),
    (RESUME, "a2c_seed42_results.json is unreadable", _corrupt("a2c_seed42_results.json", "")),
    (["train", "--algo", "ppo", "--config", "results"], "config file results is a directory, not a file", None),
    (["evaluate", "mixed"], "mixed holds 2 models (a2c_seed42_model, copy_model): give the one to use, e.g."
     " mixed/a2c_seed42_model, or rename one to mixed_model", _two_models),
    (["train", "--algo", "a2c", "--config", "tiny.toml", "--results-dir", ""], "results directory must not be empty",
     None),
    (["plot", EXP, "--out", "x.jpgz"], "--out x.jpgz: matplotlib cannot write '.jpgz' files", None),
    (["plot", EXP], "a2c_seed42_metrics.json is unreadable", _corrupt("a2c_seed42_metrics.json", '{"records": [')),
    # Values that used to pass and crash the run late, or train and learn nothing.
    (["train", "--algo", "ppo", "--set", "clip_range=inf"], "clip_range must be a finite number, got inf", None),
    (["train", "--algo", "ppo", "--set", "learning_rate=inf"], "learning_rate must be a finite number", None),
    (["train", "--algo", "ppo", "--set", "adam_eps=inf"], "adam_eps must be a finite number, got inf", None),
    (["train", "--algo", "a2c", "--set", "solve_threshold=nan"], "solve_threshold must be a finite number", None),
    (["train", "--algo", "ppo", "--steps", "1000"], "total_timesteps 1000 is less than one rollout", None),
    (["train", "--algo", "ppo", "--set", "max_grad_norm=0"], "max_grad_norm must be > 0", None),
    (["train", "--algo", "a2c", "--set", "env_id=Nope-v0"], "env_id must be one of LunarLander-v3,"
     " LunarLanderContinuous-v3, got 'Nope-v0'", None),
    (["sweep", "--algo", "a2c", "--seeds", "0", "--set", 'env_id="Nope-v0"'], "env_id must be one of", None),
    # LunarLander's options: gymnasium's ranges, wind strengths only with wind, none on envpool.
    (["train", "--algo", "ppo", "--set", "gravity=-12"], "gravity must lie in (-12, 0), bounds excluded", None),
    (["train", "--algo", "ppo", "--set", "gravity=0"], "gravity must lie in (-12, 0)", None),
    (["train", "--algo", "a2c", "--set", "enable_wind=true", "--set", "wind_power=20.5"],
     "wind_power must lie in [0, 20]", None),
    (["train", "--algo", "a2c", "--set", "enable_wind=true", "--set", "turbulence_power=-1"],
     "turbulence_power must lie in [0, 2]", None),
    (["train", "--algo", "a2c", "--set", "wind_power=5"], "wind_power needs enable_wind = true", None),
    (["sweep", "--algo", "a2c", "--seeds", "0", "--set", "turbulence_power=[0.5,1.0]"],
     "turbulence_power needs enable_wind = true", None),
    (["train", "--algo", "ppo", "--backend", "envpool", "--set", "enable_wind=true"],
     "env_backend 'envpool' has no enable_wind", None),
    (["train", "--algo", "ppo", "--backend", "envpool", "--set", "gravity=-5"], "env_backend 'envpool' has no gravity",
     None),
    (["train", "--algo", "a2c", "--set", "log_std_init=-2"], "log_std_init -2.0 needs a continuous env_id", None),
    (["train", "--algo", "a2c", "--set", "env_id=LunarLanderContinuous-v3", "--set", "log_std_init=-6"],
     "log_std_init must lie in [-5, 2]", None),
    (["train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--set", "enable_wind=true"],
     "experiments/a2c_wind15.0-turb1.5_seed42 already holds an experiment", _windy_experiment),
    (["evaluate", EXP], "its spec's env_options: gravity must lie in (-12, 0)",
     _edit_json("a2c_seed42_model/policy/metadata", env_options={"gravity": 4.0})),
    (["evaluate", EXP], "its spec's env_options must be an object of gravity, enable_wind, wind_power,"
     " turbulence_power", _edit_json("a2c_seed42_model/policy/metadata", env_options={"num_envs": 2})),
    # A re-run that would have replaced the experiment, or run with it.
    (RESUME[:-1], "already holds an experiment: add --resume to continue it or --overwrite to replace it", None),
    (["reproduce", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml"], "already holds an experiment",
     None),
    ([*RESUME, "--overwrite"], "--resume continues an experiment and --overwrite replaces it", None),
    (RESUME[:4] + ["200"] + RESUME[5:], "its checkpoint is at step 400, past total_timesteps 200", _killed_after_400),
    (["sweep", "--algo", "a2c", "--seeds", "0", "--name", "s"], "sweep results/sweeps/s exists with another config",
     _sweep_of_another_config),
    (["train", "--algo", "a2c", "--set", "total_timesteps=100"], "--set total_timesteps: use --steps instead", None),
    # The training backend.
    (["train", "--algo", "ppo", "--backend", "brax"], "invalid choice: 'brax'", None),
    (["train", "--algo", "ppo", "--set", "env_backend=envpool"], "--set env_backend: use --backend instead", None),
    (["train", "--algo", "ppo", "--backend", "envpool", "--set", "env_id=CartPole-v1"],
     "env_id must be one of LunarLander-v3, LunarLanderContinuous-v3, got 'CartPole-v1'", None),
    (["train", "--algo", "a2c", "--backend", "envpool", "--set", "normalize_observations=true"],
     "normalize_observations and normalize_rewards need env_backend 'gymnasium'", None),
    # Paths that orbax would read as a pattern, and writes it could not read back.
    (["train", "--algo", "a2c", "--config", "tiny.toml", "--results-dir", "g[1]"], "holds '[': orbax", None),
    (["train", "--algo", "a2c", "--config", "tiny.toml", "--results-dir", "qq?x"], "holds '?': orbax", None),
    (["sweep", "--algo", "a2c", "--seeds", "0", "--name", "n" * 300], "--name must be a plain"
     " directory name of at most 100 characters", None),
    (["sweep", "--algo", "a2c", "--seeds", "0", "--name", "%2E%2E%2Fescape"], "must be a plain directory name",
     None),
    # A resume that would have started afresh over a run that had checkpoints.
    (RESUME, "has no checkpoint to resume from, but holds a run that had some (a2c_seed42_model,"
     " a2c_seed42_results.json); nothing was changed", _remove_checkpoints),
    (RESUME, "checkpoints is not a directory; nothing was changed", _checkpoints_a_file),
    # Names that would have run code, edited files that crashed late.
    (["train", "--algo", "a2c", "--set", "env_id=evilmod:LunarLander-v3"], "env_id must be one of LunarLander-v3,"
     " LunarLanderContinuous-v3, got 'evilmod:LunarLander-v3'", _evil_module),
    (["train", "--algo", "a2c", "--set", f"env_id={'x' * 100_000}"], "env_id must be one of", None),
    (["evaluate", EXP], "a2c_seed42_model is unreadable (ConfigError: env_id must be one of",
     _model_spec_names_evil_module),
    (["evaluate", EXP], "a2c_seed42_model is unreadable: its parameters are not those of the network its spec"
     " describes (obs_dim 8, num_actions 4, hidden_size 32)", _edit_json("a2c_seed42_model/policy/metadata",
                                                                        hidden_size=32)),
    (["evaluate", EXP], "its spec's timestep must be an integer >= 0, got 'x'",
     _edit_json("a2c_seed42_model/policy/metadata", timestep="x")),
    (RESUME, "checkpoints/400 is unreadable (ValueError: its metadata's timestep 'x' is not its step 400)",
     _edit_json("checkpoints/400/metadata/metadata", timestep="x")),
    (RESUME, "its metadata's timestep -5000 is not its step 400",
     _edit_json("checkpoints/400/metadata/metadata", timestep=-5000)),
    (RESUME, "a2c_seed42_results.json is unreadable (ValueError: a completed run's evaluation must hold",
     _edit_json("a2c_seed42_results.json", evaluation=None)),
    (["train", "--algo", "a2c", "--config", "tiny.toml", "--results-dir", "a\\b"], "holds '\\': orbax and"
     " tensorstore", None),
    (["train", "--algo", "a2c", "--config", "tiny.toml", "--results-dir", "r" * 250], "has a name longer than 200"
     " bytes", None),
    (["plot", EXP, "--out", "a_file/x.png"], "the plot's directory a_file is not writable: a_file is not a directory",
     None),
    (RESUME, f"experiment {EXP} is not writable: {EXP} is not a directory", _experiment_a_file),
    # Numbers past any useful run, that overflowed, never ended or crashed the process.
    (["train", "--algo", "ppo", "--steps", "99999999999999999999999"], "total_timesteps must be at most"
     " 1,000,000,000,000", None),
    (["train", "--algo", "ppo", "--set", "hidden_size=1000000000"], "hidden_size must be at most 8,192", None),
    (["train", "--algo", "ppo", "--set", "eval_episodes=1000000000"], "eval_episodes must be at most 1,000,000", None),
    (["evaluate", EXP, "--sample", "--seed", str(2**63)], "seed must be below 2**32", None),
    # A finished run resumed: its config is checked as a checkpoint's is.
    (RESUME[:4] + ["400"] + RESUME[5:] + ["--set", "gamma=0.5"], "config differs from the finished run's in gamma",
     None),
    (RESUME[:4] + ["400"] + RESUME[5:] + ["--init-from", EXP], "--init-from starts a new experiment", None),
    # Config files and names that misled.
    (["train", "--config", "upper.toml"], "upper.toml: algo must be one of a2c, ppo, got 'PPO'", None),
    (["train", "--algo", "a2c", "--config", "/dev/zero"], "config file /dev/zero is not a regular file", None),
    (["sweep", "--algo", "a2c", "--seeds", "0", "--set",
      f"learning_rate=[{','.join(f'{i}e-4' for i in range(1, 30))}]"],
     "the sweep's name made of its config and --set items is 184 characters long, over 100: give it a --name", None),
    # Starting from another experiment's model.
    (["train", "--algo", "a2c", "--seed", "5", "--config", "tiny.toml", "--init-from", EXP, "--set",
      "hidden_size=32"], "its network has hidden_size 64, the config 32; set hidden_size = 64", None),
    ([*RESUME, "--init-from", EXP], "--init-from starts a new experiment and --resume continues one", None),
    (["train", "--algo", "a2c", "--seed", "5", "--config", "tiny.toml", "--init-from", "nowhere"],
     "no trained model in nowhere", None),
    (["train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--overwrite", "--init-from", EXP],
     "a2c_seed42_model: that is the model of the experiment this run would write", None),
    (["train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--overwrite", "--init-from", "link"],
     "that is the model of the experiment this run would write", _link_to_experiment),
    (["train", "--algo", "a2c", "--config", "tiny.toml", "--results-dir", "/".join(["d" * 190] * 20)],
     "bytes long, over 3500", None),
    (["evaluate", "a\\b"], "holds '\\', which tensorstore reads as a separator", None),
    # Passwords, wherever a value or a path is echoed.
    (["train", "--algo", "a2c", "--set", f"env_id=postgresql://a:{'S' * 120}@h/db"], "got 'postgresql://a:***@h/db'",
     None),
    (["evaluate", "postgresql://a:SECRET@h/db"], "no trained model in postgresql:/a:***@h/db", None),
]


def _case_id(args, damage) -> str:
    return " ".join(args) + (f" [{damage.__name__}]" if damage else "")


def _prepare(root, damage) -> None:
    """The files the battery's cases name, and the case's damage to the finished experiment."""
    (root / "bad.toml").write_text("gamma = [\n")
    (root / "unknown.toml").write_text("lr = 0.1\n")
    (root / "wrongtype.toml").write_text("learning_rate = 'fast'\n")
    (root / "no_checkpoints.toml").write_text("checkpoint_interval = 0\n")
    (root / "nan.toml").write_text("learning_rate = nan\n")
    (root / "ppo_only.toml").write_text('algo = "ppo"\nclip_range = 0.1\n')
    (root / "lr.toml").write_text("checkpoint_interval = 200\neval_episodes = 2\nlearning_rate = 1e-3\n")
    (root / "a_file").write_text("not a directory\n")
    (root / "upper.toml").write_text('algo = "PPO"\n')
    if damage:
        damage(root)


def _one_line_exit_2_nothing_changed(run, root, args, message, damage) -> None:
    _prepare(root, damage)
    before = snapshot(root)
    proc = run(*args, cwd=root)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[:2000]
    assert len(lines[0]) <= 1100  # a long value is cut, not echoed whole
    assert "SECRET" not in proc.stderr and "SSSS" not in proc.stderr
    assert snapshot(root) == before  # the existing experiment and every other file untouched


# Orbax's readers report a failed read from their threads after the command's own error (main()'s hooks drop
# those reports): in this process they come after the hooks are put back, so a child process checks those cases.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def _marked(cases):
    """The cases as parameters; those whose refusal comes from matplotlib need it."""
    return [pytest.param(*case, id=_case_id(case[0], case[2]),
                         marks=[pytest.mark.needs("matplotlib")] if "matplotlib" in case[1] else [])
            for case in cases]


@pytest.mark.parametrize("args,message,damage", _marked(BAD))
def test_bad_input_one_line_exit_2_nothing_changed(cli, finished_copy, args, message, damage):
    """Each case through main(argv) in this process: the command line's own handling, without a start-up each."""
    _one_line_exit_2_nothing_changed(cli, finished_copy, args, message, damage)


IN_A_CHILD = [case for case in BAD if case[2] in (_corrupt_checkpoint_metadata, _delete_checkpoint_state,
                                                 _truncate_checkpoint_arrays, _truncate_model_arrays, _evil_module,
                                                 _model_spec_names_evil_module)
              or case[0] == ["train", "--algo", "dqn"]]


@pytest.mark.slow
@pytest.mark.parametrize("args,message,damage", _marked(IN_A_CHILD))
def test_bad_input_in_a_child_process_is_one_line_too(finished_copy, args, message, damage):
    """As a process of its own: the cases whose failure threads report late (nothing reaches stderr after the one
    line), argparse's own exit, and the names that would import a module from the working directory."""
    _one_line_exit_2_nothing_changed(run_cli, finished_copy, args, message, damage)


@pytest.mark.needs("matplotlib")  # the learning curve's PNG, and the comparison plot
def test_tiny_run_through_the_cli(cli, tmp_path):
    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 200\neval_episodes = 2\nseed = 3\n")
    proc = cli("train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--quiet",
               cwd=tmp_path)  # the seed is the config file's
    assert proc.returncode == 0, proc.stderr
    assert "INFO" not in proc.stderr  # --quiet: no progress lines
    assert "a2c_seed3: 400 steps" in proc.stdout and "evaluation over 2 episodes" in proc.stdout
    results = load_json(tmp_path / "results/experiments/a2c_seed3/a2c_seed3_results.json")
    assert results["seed"] == 3 and results["total_timesteps"] == 400
    assert results["artifacts"]["checkpoints"] == ["checkpoints/200", "checkpoints/400"]
    png = tmp_path / "results/experiments/a2c_seed3/a2c_seed3_learning_curve.png"  # plotted after training
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    human = cli("evaluate", "results/experiments/a2c_seed3", "--episodes", "2", cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("results/experiments/a2c_seed3: 2 deterministic episodes from seed ")
    proc = cli("evaluate", "results/experiments/a2c_seed3", "--episodes", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"episodes": 2' in proc.stdout
    greedy = json.loads(proc.stdout)
    assert f"mean {greedy['mean']:.1f} +/- {greedy['std']:.1f}" in human.stdout
    proc = cli("evaluate", "results/experiments/a2c_seed3", "--episodes", "2", "--sample", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sampled = json.loads(proc.stdout)
    assert sampled["episodes"] == 2 and sampled["mean"] != greedy["mean"]
    proc = cli("plot", "results/experiments/a2c_seed3", "results/experiments/a2c_seed3", "--out", "cmp.png",
               cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    proc = cli("plot", "results/experiments/nothing", cwd=tmp_path)
    assert proc.returncode == 2 and "no experiment directory" in proc.stderr


class FakeDevice:
    """A device as JAX lists it: what the choice of devices reads."""

    def __init__(self, platform: str):
        self.platform, self.device_kind, self.id = platform, f"fake {platform}", 0

    def __repr__(self):
        return f"{self.platform.capitalize()}Device(id=0)"


@pytest.fixture
def visible(monkeypatch):
    """visible("gpu", "cpu"): JAX shows these platforms, the first its default; the others are refused as JAX
    refuses a platform it lacks."""
    def show(*platforms: str) -> dict[str, FakeDevice]:
        devices = {platform: FakeDevice(platform) for platform in platforms}

        def jax_devices(backend=None):
            if backend is None:
                return [devices[platforms[0]]]
            if backend not in devices:
                raise RuntimeError(f"Unknown backend: '{backend}' requested")
            return [devices[backend]]

        monkeypatch.setattr(jax, "devices", jax_devices)
        return devices
    return show


def test_with_a_gpu_updates_run_on_it_and_actions_are_sampled_on_the_host_cpu(visible):
    from jaxrl_lander.training.runtime import Devices

    devices = visible("gpu", "cpu")
    assert Devices.resolve() == Devices(update=devices["gpu"], act=devices["cpu"])
    assert Devices.resolve("cpu") == Devices(update=devices["cpu"], act=devices["cpu"])
    assert Devices.resolve("auto", "gpu") == Devices(update=devices["gpu"], act=devices["gpu"])
    assert Devices.resolve().describe() == {"platform": "gpu", "device_kind": "fake gpu", "device": "GpuDevice(id=0)",
                                            "act_device": "CpuDevice(id=0)"}


def test_where_jax_hides_the_cpu_acting_follows_the_update(visible):
    from jaxrl_lander.training.runtime import Devices

    devices = visible("tpu")
    assert Devices.resolve() == Devices(update=devices["tpu"], act=devices["tpu"])


def test_a_device_that_is_not_there_is_a_usage_error(visible, cli, tmp_path):
    visible("cpu")
    proc = cli("train", "--algo", "ppo", "--device", "gpu", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "jaxrl_lander: error: no GPU is visible to JAX on this machine"]
    assert list(tmp_path.iterdir()) == []


def test_reproduce_records_sc004(cli, tmp_path):
    (tmp_path / "tiny.toml").write_text("checkpoint_interval = 200\neval_episodes = 2\n")
    proc = cli("reproduce", "--algo", "ppo", "--steps", "600", "--config", "tiny.toml", "--set", "n_steps=64",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "SC-004 PASS" in proc.stdout and "parameters identical: True" in proc.stdout
    results = load_json(tmp_path / "results/experiments/ppo_seed42/ppo_seed42_results.json")
    assert results["success_criteria"]["SC-004"]["value"] == 0.0
    assert results["success_criteria"]["SC-004"]["passed"] is True
    assert results["reproducibility"]["metrics_identical"] is True
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["experiments"]  # the scratch run is gone
    validate(results, EXPERIMENT_RESULTS)


def test_a_reader_that_goes_away_ends_the_command_quietly(finished_copy):
    tmp_path = finished_copy
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -m jaxrl_lander evaluate {EXP} --episodes 1 | true;"
                           " echo ${PIPESTATUS[0]}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "141" and proc.stderr == "", proc.stderr  # 128 + SIGPIPE, as a shell's tools end


@pytest.mark.parametrize("module,args", [("matplotlib", ["plot", EXP]),
                                         ("PIL", ["evaluate", EXP, "--episodes", "1", "--render"])])
def test_a_command_whose_optional_extra_is_missing_says_which_to_install(cli, finished_copy, monkeypatch, module,
                                                                         args):
    monkeypatch.setitem(sys.modules, module, None)  # as where the plot extra is not installed
    before = snapshot(finished_copy)
    proc = cli(*args, cwd=finished_copy)
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [
        f"jaxrl_lander: error: this needs {module}, which is not installed: pip install 'jaxrl_lander[plot]'"
        " (make installs it)"]), proc.stderr
    assert snapshot(finished_copy) == before


def test_the_hint_after_a_run_that_does_not_land_names_the_config_that_lands_on_its_env():
    from types import SimpleNamespace

    from jaxrl_lander.cli.commands import _not_solved
    from jaxrl_lander.config import make_config

    def hint(algo, **values):
        config = make_config(algo, values)
        return _not_solved(SimpleNamespace(config=config, evaluation={"mean": -100.0}), None)

    assert hint("ppo").endswith("Parity); configs/ppo_solve.toml lands")
    assert hint("a2c").endswith("Parity); configs/a2c_solve.toml lands")
    continuous = hint("ppo", env_id="LunarLanderContinuous-v3")
    assert continuous.endswith("; 50,000 steps are too few to land; configs/ppo_continuous_solve.toml lands")
    assert "-600 and -400" not in continuous  # the seed experiment's range is the discrete lander's
    assert hint("ppo", enable_wind=True).endswith("; 50,000 steps are too few to land; configs/ppo_windy.toml lands")
    for quiet in (hint("a2c", env_id="LunarLanderContinuous-v3"), hint("a2c", enable_wind=True),
                  hint("ppo", enable_wind=True, wind_power=5.0), hint("ppo", total_timesteps=500_000)):
        assert quiet == "SC-006 not met: -100.0 is not above solve_threshold 200"
