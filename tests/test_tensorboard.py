"""`--tensorboard`: the event files of a real short run hold the scalars users look for, with the run's values."""

import struct
from collections import defaultdict

import pytest
from helpers import load_json, train_run

from jaxrl_lander.storage.model import load_model
from jaxrl_lander.config import make_config

pytestmark = pytest.mark.needs("tensorboardX")  # every test here writes and reads event files


def read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the TFRecord event files in `directory` (length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    scalars = defaultdict(list)
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars[value.tag].append((event.step, value.simple_value))
    return scalars


@pytest.mark.parametrize("algo", ["a2c", "ppo"])
def test_event_files_hold_the_run(tmp_path, algo):
    extra = {"n_steps": 16, "batch_size": 32} if algo == "ppo" else {}
    config = make_config(algo, {"total_timesteps": 1_024, "checkpoint_interval": 512, "eval_interval": 400,
                                "eval_interval_episodes": 1, "eval_episodes": 2, "anneal_lr": True, **extra})
    _, results, paths = train_run(config, tmp_path, tensorboard=True)
    results = results.to_dict()
    scalars = read_scalars(paths.tensorboard)
    metrics = load_json(paths.metrics)

    expected = {"train/loss", "train/policy_loss", "train/value_loss", "train/entropy", "train/explained_variance",
                "train/learning_rate", "episode/return", "episode/length", "rollout/ep_rew_mean",
                "rollout/ep_len_mean", "time/steps_per_second", "eval/mean_return"}
    if algo == "ppo":
        expected |= {"train/approx_kl", "train/clip_fraction"}
    assert expected <= set(scalars)

    updates = results["updates"]
    assert len(scalars["train/loss"]) == updates
    # The annealed step size: learning_rate * (1 - k / updates) at update k.
    lrs = [v for _, v in scalars["train/learning_rate"]]
    assert lrs == pytest.approx([config.learning_rate * (1 - k / updates) for k in range(updates)], rel=1e-5)
    # Every finished episode, at the step it ended, with its return.
    episodes = [(e["timestep"], e["return"]) for e in metrics["episodes"]]
    assert scalars["episode/return"] == [(t, pytest.approx(r, rel=1e-5)) for t, r in episodes]
    # Evaluations: two during training, then the final one.
    evals = scalars["eval/mean_return"]
    assert [t for t, _ in evals] == [400, 800, 1_024]
    during = [e["mean"] for e in results["evaluations_during_training"]]
    assert [v for _, v in evals] == pytest.approx([*during, results["evaluation"]["mean"]], rel=1e-5)
    assert all(v > 0 for _, v in scalars["time/steps_per_second"])


def test_a_selection_that_chooses_the_last_parameters_reuses_their_evaluation(tmp_path):
    """When the selected checkpoint is the last step's, its verdict is the last parameters' evaluation (same
    parameters, statistics and episodes), played once, and TensorBoard still gets the final evaluation."""
    config = make_config("a2c", {"total_timesteps": 1200, "checkpoint_interval": 200, "eval_interval": 1200,
                                 "eval_interval_episodes": 1, "eval_episodes": 3, "normalize_observations": True,
                                 "select_best_checkpoint": True})
    _, results, paths = train_run(config, tmp_path, tensorboard=True)
    selected, evaluation = results.selected_checkpoint, results.evaluation
    assert selected["timestep"] == 1200  # the one evaluation during training is the last step's, so it is the best
    assert {k: evaluation[k] for k in selected["last_parameters_evaluation"]} == selected["last_parameters_evaluation"]
    assert evaluation["seeds"][0] == load_model(paths.model)[1].first_eval_seed
    evals = read_scalars(paths.tensorboard)["eval/mean_return"]
    assert evals[-1] == (1200, pytest.approx(evaluation["mean"], rel=1e-5))
    assert len(evals) == 1 + 1  # the evaluation during training, then the final one
