"""The README tells the truth: its Python runs, and every make target, make variable and CLI option it names exists."""

import os
import re
from pathlib import Path

import pytest

from jaxrl_lander.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_python_block_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README shows the Python API"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)  # the blocks write under ./results
    for block in blocks:
        namespace = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    # What the first block promises, checked.
    results, policy = namespace["results"], namespace["policy"]
    assert results.status == "completed" and results.experiment_dir == Path("results/python/experiments/ppo_seed0")
    assert namespace["greedy"].shape == (5,) and str(namespace["greedy"].dtype) == "int32"
    assert namespace["solve"].seed == 1 and namespace["solve"].total_timesteps == 500_000
    assert policy(namespace["obs"], deterministic=False, seed=0).tolist() == namespace["sampled"].tolist()


def _cli_options() -> set[str]:
    parser = build_parser()
    options = set()
    for command in parser._subparsers._group_actions[0].choices.values():
        for action in command._actions:
            options.update(action.option_strings)
    return options


def test_every_named_option_target_and_variable_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named_targets = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert named_targets and sorted(named_targets - targets) == []
    variables = set(re.findall(r"\b([A-Z][A-Z_]+)=", README)) - {"KEY"}  # KEY=VALUE: --set's own
    assert {"ALGO", "SEED", "CONFIG", "SET"} <= variables
    assert sorted(v for v in variables if not re.search(rf"\$\({v}\)|^{v} \?=", makefile, re.M)) == []
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", README)) - {"--logdir"}  # tensorboard's own
    assert "--set" in options and sorted(options - _cli_options()) == []
    commands = set(re.findall(r"python -m jaxrl_lander ([a-z]+)", README))
    assert commands == set(build_parser()._subparsers._group_actions[0].choices)


def test_console_script_is_the_cli():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"jaxrl-lander": "jaxrl_lander.cli.main:main"} and "`jaxrl-lander`" in README


@pytest.mark.parametrize("command", ["train", "reproduce", "sweep", "tune", "plot", "evaluate"])
def test_help_shows_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "default: 42) (default" not in text
    assert not re.search(r"default[^()]*\) \(default", text)
    if command in ("train", "reproduce", "sweep", "tune"):
        assert "ent_coef = 0.01 / 0.0" in text and "Weight of the entropy bonus." in text  # the config keys
        # A TOML file sets every key, those with an option of their own too; the help says which option.
        assert 'total_timesteps = 50000 / 50000 (on the command line --steps, not --set)' in text
        assert 'algo = "ppo" / "a2c" (on the command line --algo, not --set)' in text
    if command == "train":
        assert "--seed SEED the run's one seed (default: the config's seed, 42 unless set)" in text
        assert "--algo {a2c,ppo} algorithm (default: the --config file's algo) --steps" in text


def test_no_readme_number_without_its_measurement():
    """The README's Measured section names the command and the machine of each table."""
    measured = README.split("## Measured", 1)[1]
    for table in re.split(r"\n### ", measured)[1:]:
        assert "`make " in table and "machine" in table, table[:80]




def test_make_passes_a_config_files_algo_and_keeps_a_storage_off_the_command_line():
    import subprocess

    def recipe(*variables):  # the command line make would run (a make of its own, not a sub-make of `make test`)
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        out = subprocess.run(["make", "-n", "--no-print-directory", *variables], cwd=ROOT, capture_output=True,
                             text=True, check=True, env=env).stdout
        return next(line for line in reversed(out.splitlines()) if " -m jaxrl_lander " in line).strip()

    assert "--algo" not in recipe("train", "CONFIG=configs/a2c_tuned.toml", "SEED=1")  # the file says a2c
    assert "--algo a2c " in recipe("train", "ALGO=a2c", "CONFIG=configs/a2c_tuned.toml")
    assert recipe("train").endswith("train --algo ppo")
    assert "S3cret" not in recipe("tune", "ALGO=a2c", "STORAGE=postgresql://alice:S3cret@db/optuna")
