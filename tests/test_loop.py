"""The loop's bookkeeping: when the collector must stop, and the order in which the outputs hear of the steps."""

from helpers import short_config

from jaxrl_lander.training.collect import Episode
from jaxrl_lander.training.loop import _tell, crossed, next_due
from jaxrl_lander.outputs import Outputs, Sink
from jaxrl_lander.storage.metrics import MetricsRecorder


class Heard(Sink):
    def __init__(self):
        self.events = []

    def episode(self, step, episode_return, length):
        self.events.append(("episode", step, episode_return))

    def update(self, step, metrics):
        self.events.append(("update", step, metrics["loss"]))

    def record(self, record):
        self.events.append(("record", record["timestep"], record["loss"], record["episode"]))


def _outputs(loss=None):
    heard = Heard()
    return Outputs(MetricsRecorder("x", "a2c", "LunarLander-v3", 0, 100), [heard], loss=loss), heard


def test_next_due_is_the_first_checkpoint_evaluation_or_end_after_now():
    config = short_config("a2c", total_timesteps=5000, checkpoint_interval=1000, eval_interval=1500)
    assert [next_due(config, t) for t in (0, 999, 1000, 1400, 1504, 2999, 4500)] == [
        1000, 1000, 1500, 1500, 2000, 3000, 5000]
    assert next_due(short_config("a2c", total_timesteps=700), 0) == 700  # the end comes first
    assert crossed(96, 104, 100) and not crossed(100, 104, 100) and crossed(192, 200, 100)


def test_steps_are_told_in_the_order_they_happened():
    """Episodes at a step, then (at the collection's last step) the update, then the record due at that step;
    a record before the update carries the loss of the update before it."""
    config = short_config("a2c", recording_interval=100)
    outputs, heard = _outputs(loss=0.5)
    episodes = [Episode(96, -1.0, 12), Episode(104, -2.0, 13), Episode(104, -3.0, 13), Episode(200, -4.0, 25)]
    _tell(outputs, config, start=88, end=200, size=8, episodes=episodes, update={"loss": 0.25}, learned=True)
    assert heard.events == [
        ("episode", 96, -1.0), ("episode", 104, -2.0), ("episode", 104, -3.0), ("record", 104, 0.5, 3),
        ("episode", 200, -4.0), ("update", 200, 0.25), ("record", 200, 0.25, 4)]
    assert outputs.loss == 0.25 and [r["timestep"] for r in outputs.recorder.records] == [104, 200]


def test_the_progress_bar_ends_at_the_last_step_not_the_last_record():
    from jaxrl_lander.outputs.console import ProgressBar

    bar = ProgressBar(total=4096, start=0)
    outputs = Outputs(MetricsRecorder("x", "ppo", "LunarLander-v3", 0, 100), [bar])
    outputs.record(4000)
    assert bar.progress.tasks[0].completed == 4000
    outputs.close(4096)
    assert bar.progress.tasks[0].completed == 4096 and bar.progress.tasks[0].finished


def test_a_failed_update_makes_no_record_at_its_step():
    config = short_config("a2c", recording_interval=100)
    outputs, heard = _outputs(loss=0.5)
    _tell(outputs, config, start=88, end=200, size=8, episodes=[Episode(200, -4.0, 25)], update=None, learned=False)
    assert heard.events == [("record", 104, 0.5, 0), ("episode", 200, -4.0)]


def test_progress_lines_come_every_tenth_of_the_run_or_after_a_silence(caplog):
    """A run too long for a tenth of it to pass soon still says how it goes, every SILENCE seconds."""
    from jaxrl_lander.outputs.console import LogLines

    lines = LogLines(total=10**12, start=0)
    record = {"timestep": 1000, "episode": 3, "reward": -100.0}
    with caplog.at_level("INFO", logger="jaxrl_lander"):
        lines.record(record)
        assert caplog.messages == []  # far from a tenth of the run, and no silence yet
        lines.last_line -= LogLines.SILENCE
        lines.record({**record, "timestep": 2000})
        lines.record({**record, "timestep": 3000})  # just told: quiet again
    assert [m.split(" |")[0] for m in caplog.messages] == ["step 2000/1000000000000"]
    short = LogLines(total=1000, start=0)
    with caplog.at_level("INFO", logger="jaxrl_lander"):
        for step in (100, 250, 290, 300):
            short.record({**record, "timestep": step})
    assert [m.split(" |")[0] for m in caplog.messages[1:]] == ["step 100/1000", "step 250/1000", "step 300/1000"]
