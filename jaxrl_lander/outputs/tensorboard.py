"""TensorBoard event files of a run (optional: `--tensorboard`; needs tensorboardX, the `tensorboard` extra).

Scalars, each at the env step it belongs to, under the names Stable-Baselines3 users know:
    rollout/ep_rew_mean, rollout/ep_len_mean   means over the last 100 episodes, at each metrics record
    episode/return, episode/length             every finished training episode
    train/loss, train/policy_loss, train/value_loss, train/entropy, train/explained_variance,
    train/approx_kl, train/clip_fraction (PPO), train/learning_rate   after each update
    time/steps_per_second                      at each metrics record, the mean since the process started
    eval/mean_return                           each evaluation during training, and the final one
"""

import time
from pathlib import Path
from typing import Any

from jaxrl_lander.config.errors import ConfigError, install_hint
from jaxrl_lander.outputs import Sink

TRAIN_SCALARS = ("loss", "policy_loss", "value_loss", "entropy", "explained_variance", "approx_kl", "clip_fraction")


def require_tensorboard() -> None:
    """Raise ConfigError with the install hint when tensorboardX is missing."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ConfigError(f"--tensorboard needs tensorboardX: {install_hint('tensorboardX')}") from None


class TensorBoardLog(Sink):
    """Writes one run's scalars to event files under `directory` (a resumed run adds a new file there)."""

    def __init__(self, directory: str | Path, start_step: int):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(directory))
        self._start_step, self._start_time = start_step, time.perf_counter()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        for name in (*TRAIN_SCALARS, "learning_rate"):
            if name in metrics:
                self.writer.add_scalar(f"train/{name}", metrics[name], step)

    def episode(self, step: int, episode_return: float, length: int) -> None:
        self.writer.add_scalar("episode/return", episode_return, step)
        self.writer.add_scalar("episode/length", length, step)

    def record(self, record: dict[str, Any]) -> None:
        """Rolling means, and the mean speed since this process started training."""
        step = record["timestep"]
        if record["reward"] is not None:
            self.writer.add_scalar("rollout/ep_rew_mean", record["reward"], step)
            self.writer.add_scalar("rollout/ep_len_mean", record["episode_length"], step)
        seconds = time.perf_counter() - self._start_time
        if seconds > 0 and step > self._start_step:
            self.writer.add_scalar("time/steps_per_second", (step - self._start_step) / seconds, step)

    def evaluation(self, step: int, summary: dict[str, Any], final: bool = False) -> None:
        self.writer.add_scalar("eval/mean_return", summary["mean"], step)  # the final one too

    def close(self, step: int) -> None:
        self.writer.close()
