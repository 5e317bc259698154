"""TensorBoard event files of a run (optional: `--tensorboard`, needs the `tensorboard` extra, tensorboardX).

Scalars, each at the env step it belongs to, under the names Stable-Baselines3 users know:
    rollout/ep_rew_mean, rollout/ep_len_mean   means over the last 100 episodes, at each metrics record
    episode/return, episode/length             every finished training episode
    train/loss, train/policy_loss, train/value_loss, train/entropy, train/explained_variance,
    train/approx_kl, train/clip_fraction (PPO), train/learning_rate   after each update
    time/steps_per_second                      at each metrics record
    eval/mean_return                           each evaluation during training, and the final one
"""

import time
from pathlib import Path
from typing import Any

from jaxrl_lander.config import ConfigError

TRAIN_SCALARS = ("loss", "policy_loss", "value_loss", "entropy", "explained_variance", "approx_kl", "clip_fraction")


def require_tensorboard() -> None:
    """Raise ConfigError with the install hint when tensorboardX is missing."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs tensorboardX: pip install 'jaxrl_lander[tensorboard]' (make installs it)"
        ) from None


class TensorBoardLog:
    """Writes one run's scalars to event files under `directory` (a resumed run adds a new file there)."""

    def __init__(self, directory: str | Path, start_step: int):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(directory))
        self._last_step, self._last_time = start_step, time.perf_counter()

    def update(self, step: int, metrics: dict[str, Any], learning_rate: float) -> None:
        for name in TRAIN_SCALARS:
            if name in metrics:
                self.writer.add_scalar(f"train/{name}", float(metrics[name]), step)
        self.writer.add_scalar("train/learning_rate", learning_rate, step)

    def episode(self, step: int, episode_return: float, length: int) -> None:
        self.writer.add_scalar("episode/return", episode_return, step)
        self.writer.add_scalar("episode/length", length, step)

    def record(self, record: dict[str, Any]) -> None:
        """A metrics record (recording.MetricsRecorder.record): rolling means and the speed since the last."""
        step, now = record["timestep"], time.perf_counter()
        if record["reward"] is not None:
            self.writer.add_scalar("rollout/ep_rew_mean", record["reward"], step)
            self.writer.add_scalar("rollout/ep_len_mean", record["episode_length"], step)
        if now > self._last_time:
            self.writer.add_scalar("time/steps_per_second", (step - self._last_step) / (now - self._last_time), step)
        self._last_step, self._last_time = step, now

    def evaluation(self, step: int, mean_return: float) -> None:
        self.writer.add_scalar("eval/mean_return", mean_return, step)

    def close(self) -> None:
        self.writer.close()
