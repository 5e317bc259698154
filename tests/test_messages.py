"""The command line's messages where they used to mislead: a config directory, two models, an unwritable or empty
results directory, a plot it cannot write or read, Ctrl-C at any moment, a long evaluation, the files' modes."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import (TINY_TOML as TINY, child_env, cli_command, has_checkpoint, imports_begun, one_error, snapshot,
                     wait_for)

EXP = "results/experiments/a2c_seed42"
INTERRUPTED = "jaxrl_lander: interrupted"


class Child:
    """The command line as a child process; a thread reads its stderr, so that a wait for a line can time out."""

    def __init__(self, *args, cwd):
        self.proc = subprocess.Popen(cli_command(*args), cwd=cwd, env=child_env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in iter(self.proc.stderr.readline, ""):
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text, timeout=120):
        """The stderr lines up to and including the first holding `text`."""
        seen, deadline = [], time.monotonic() + timeout
        while not seen or text not in seen[-1]:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {timeout} s: {seen}") from None
            assert line is not None, f"stderr ended before a line with {text!r}: {seen}"
            seen.append(line)
        return seen

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout=120):
        """The exit status, the stdout, and the stderr lines not read yet."""
        self.proc.wait(timeout=timeout)
        rest = []
        while (line := self.lines.get(timeout=30)) is not None:
            rest.append(line)
        return self.proc.returncode, self.proc.stdout.read(), rest


@pytest.fixture
def start_cli():
    """Child(...), killed at the end of the test if it still runs."""
    children = []
    yield lambda *args, cwd: children.append(Child(*args, cwd=cwd)) or children[-1]
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


# A config directory and a directory of two models: in the bad-input battery of test_cli.py.


def test_the_one_model_of_a_directory_is_used(tmp_path):
    from jaxrl_lander.storage.files import model_path

    (tmp_path / "ppo_seed42_model").mkdir()
    (tmp_path / "copy_metrics.json").write_text("{}")  # another experiment's metrics beside it
    assert model_path(tmp_path) == tmp_path / "ppo_seed42_model"


def test_experiments_in_the_way_is_a_usage_error(cli, tmp_path):
    # Unwritable as root too (mode bits bind no root): a file where the experiments directory would go.
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "X").mkdir()
    (tmp_path / "X" / "experiments").write_text("a file, not a directory\n")
    before = snapshot(tmp_path)
    one_error(cli("train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--results-dir", "X",
                      cwd=tmp_path), "results directory X is not writable: X/experiments is not a directory")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory: its mode bits bind no root")
def test_read_only_experiments_is_a_usage_error(cli, tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "X" / "experiments").mkdir(parents=True)
    (tmp_path / "X" / "experiments").chmod(0o555)
    try:
        one_error(cli("train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--results-dir", "X",
                          cwd=tmp_path), "results directory X is not writable: X/experiments is read-only")
        assert list((tmp_path / "X" / "experiments").iterdir()) == []
    finally:
        (tmp_path / "X" / "experiments").chmod(0o755)


def test_read_only_experiments_message(tmp_path, monkeypatch):
    # What a user other than root meets (the test above, skipped as root): os.access says no for experiments/.
    from jaxrl_lander.storage import files
    from jaxrl_lander.config.errors import ConfigError

    (tmp_path / "experiments").mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "experiments" and access(path, mode))
    with pytest.raises(ConfigError, match=re.escape(
            f"results directory {tmp_path} is not writable: {tmp_path / 'experiments'} is read-only")):
        files.check_results_dir(tmp_path)
    with pytest.raises(ConfigError, match="results directory must not be empty"):
        files.check_results_dir("")


@pytest.mark.parametrize("command", ["train", "reproduce", "sweep"])
def test_an_empty_results_directory_is_refused(cli, tmp_path, command):
    (tmp_path / "tiny.toml").write_text(TINY)
    args = ["--seeds", "0"] if command == "sweep" else []
    one_error(cli(command, "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", *args,
                      "--results-dir", "", cwd=tmp_path),
              "argument --results-dir: results directory must not be empty")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.toml"]


@pytest.mark.parametrize("out,message", [("x.jpgz", "matplotlib cannot write '.jpgz' files; give one of "),
                                         ("curve", "matplotlib cannot write a file without a suffix; give one of ")])
@pytest.mark.needs("matplotlib")
def test_a_plot_format_matplotlib_lacks_is_refused_first(cli, finished_copy, out, message):
    before = snapshot(finished_copy)
    proc = cli("plot", EXP, "--out", out, cwd=finished_copy)
    one_error(proc, f"--out {out}: {message}")
    assert ".pdf, " in proc.stderr and ".png, " in proc.stderr
    assert snapshot(finished_copy) == before


@pytest.mark.parametrize("name,text", [("a2c_seed42_metrics.json", '{"records": ['),
                                       ("a2c_seed42_metrics.json", "{}"), ("a2c_seed42_results.json", "[1")])
def test_a_plot_of_an_unreadable_file_names_it(cli, finished_copy, name, text):
    (finished_copy / EXP / name).write_text(text)
    before = snapshot(finished_copy)
    one_error(cli("plot", EXP, cwd=finished_copy), f"{EXP}/{name} is unreadable (")
    assert snapshot(finished_copy) == before


def test_ctrl_c_during_start_up_is_one_line(tmp_path, start_cli):
    (tmp_path / "tiny.toml").write_text(TINY)
    child = start_cli("train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--quiet", cwd=tmp_path)
    wait_for(lambda: imports_begun(child.proc.pid), "the imports of JAX", child.proc)  # past the interpreter's start
    child.interrupt()
    assert child.finish() == (130, "", [INTERRUPTED])


def test_sigterm_during_start_up_is_one_line(tmp_path, start_cli):
    """As Ctrl-C is: it used to end the process with no word (a tuning worker then left its trial running)."""
    (tmp_path / "tiny.toml").write_text(TINY)
    child = start_cli("train", "--algo", "a2c", "--steps", "400", "--config", "tiny.toml", "--quiet", cwd=tmp_path)
    wait_for(lambda: imports_begun(child.proc.pid), "the imports of JAX", child.proc)  # past the interpreter's start
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == (143, "", ["jaxrl_lander: terminated"])


@pytest.mark.slow
def test_a_long_evaluation_shows_progress_and_stops_on_ctrl_c(finished_copy, start_cli):
    child = start_cli("evaluate", EXP, "--episodes", "100000000", cwd=finished_copy)
    progress = child.wait_for("played 64/100000000 episodes in ")  # after the first batch of 64, then every 10 s
    child.interrupt()
    status, out, rest = child.finish()
    assert (status, out, rest[-1:]) == (130, "", [INTERRUPTED]), rest
    assert all(" INFO played " in line for line in progress + rest[:-1]), progress + rest


@pytest.mark.slow
def test_a_second_ctrl_c_while_training_stops_is_one_line(tmp_path, start_cli):
    (tmp_path / "tiny.toml").write_text(TINY)
    child = start_cli("train", "--algo", "a2c", "--steps", "100000000", "--config", "tiny.toml", "--quiet",
                      cwd=tmp_path)
    wait_for(lambda: has_checkpoint(tmp_path / EXP / "checkpoints"), "a checkpoint", child.proc)
    child.interrupt()  # the first asks the loop to stop: it saves a checkpoint and warns
    stopping = child.wait_for("a2c_seed42: stopped by SIGINT at step")
    child.interrupt()  # the second, while the model, the results and the learning curve are written
    assert len(stopping) == 1 and child.finish() == (130, "", [INTERRUPTED])


@pytest.mark.needs("matplotlib")  # the PNG it compares with
def test_json_files_follow_the_umask_as_the_png_does(finished_cli_run, tmp_path):
    exp = finished_cli_run / EXP
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("a2c_seed42_metrics.json", "a2c_seed42_results.json", "a2c_seed42_learning_curve.png"):
        assert (exp / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    from jaxrl_lander.storage.files import replaced_atomically, write_json_atomic

    (tmp_path / ".b.txt.0123abcd.tmp.txt").touch(mode=0o600)  # what a killed run left (a resume removes it)
    previous = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "a.json", {"a": 1})
        with replaced_atomically(tmp_path / "b.txt") as tmp:
            tmp.write_text("b")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o640, "b.txt": 0o640, ".b.txt.0123abcd.tmp.txt": 0o600}


def test_the_progress_bar_keeps_its_numbers_and_time_left_on_80_columns(monkeypatch):
    import io

    from rich.console import Console

    from jaxrl_lander.outputs import console
    from jaxrl_lander.outputs.console import ProgressBar

    monkeypatch.setattr(console.time, "perf_counter", lambda: 1000.0)  # the clock stands still: 10 s exactly below

    for label, width in (("training", 80), ("ppo_seed0 (shown, of 10 agents)", 80), ("training", 120)):
        screen = io.StringIO()
        bar = ProgressBar(1_000_000, 0, label, console=Console(file=screen, width=width, force_terminal=True,
                                                               color_system=None))
        bar.t0 -= 10.0  # 12,346 steps/s
        bar.record({"timestep": 123_456, "episode": 12_345, "reward": -123.4})
        bar.close(123_456)
        line = [row for row in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()).splitlines() if row.strip()][-1]
        assert len(line) <= width
        assert "123,456/1,000,000 " in line and "12,346/s" in line, line
        assert "12,345 ep" in line and "ret -123.4" in line, line
        assert re.search(r"(\d+:\d\d:\d\d|-:--:--)$", line), line  # the time left, whole
        assert line.count("━") + line.count("╸") + line.count(" ") > 4  # a bar, not a sliver


@pytest.mark.slow
def test_train_from_python_shows_its_progress(tmp_path):
    """A script that sets up no logging still sees the run's progress lines and its final evaluation."""
    code = ("from jaxrl_lander import A2CConfig, train; "
            "train(A2CConfig(total_timesteps=400, checkpoint_interval=200, eval_episodes=1), 'results')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"step \d+/400 \| \d+ steps/s", proc.stderr), proc.stderr
    assert "final evaluation at step 400" in proc.stderr
