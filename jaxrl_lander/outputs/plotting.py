"""Learning-curve PNGs (matplotlib, from the `plot` extra): one experiment, several side by side, or a sweep."""

import logging
import textwrap
from pathlib import Path

import numpy as np

from jaxrl_lander.config.errors import ConfigError, first_line
from jaxrl_lander.storage.files import ExperimentPaths, read_json, replaced_atomically
from jaxrl_lander.storage.metrics import RECENT_EPISODES, metrics_file, read_metrics


log = logging.getLogger("jaxrl_lander")

def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_figure_path(path: Path) -> None:
    """Raise ConfigError unless matplotlib writes the format that `path`'s suffix names."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        kind = f"'{path.suffix}' files" if path.suffix else "a file without a suffix"
        raise ConfigError(f"--out {path}: matplotlib cannot write {kind}; give one of .{', .'.join(sorted(formats))}")


def _read_curves(paths: ExperimentPaths) -> tuple[np.ndarray, np.ndarray, list[tuple[int, float]]]:
    """(episode steps, episode returns, evaluation points) of an experiment; ConfigError names an unreadable file."""
    file = metrics_file(paths)  # the journal of a run still training, or killed
    try:
        episodes = read_metrics(file)["episodes"]
        steps, returns = np.array([e["timestep"] for e in episodes]), np.array([e["return"] for e in episodes])
        file = paths.results
        results = read_json(file) if file.is_file() else None
        evals = [(e["timestep"], e["mean"]) for e in results["evaluations_during_training"]] if results else []
        if results and results["evaluation"]:
            evals.append((results["timestep"], results["evaluation"]["mean"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{file} is unreadable ({first_line(exc)})") from None
    return steps, returns, evals


def save_figure(fig, path: Path) -> Path:
    """Write the figure to a temporary file beside `path` and rename it into place."""
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp)
    return path


def rolling_mean(x: np.ndarray, window: int = RECENT_EPISODES) -> np.ndarray:
    """Mean of the last `window` values (fewer at the start), as the recorder's rolling return."""
    sums = np.concatenate([[0.0], np.cumsum(x)])
    end = np.arange(1, len(x) + 1)
    start = np.maximum(0, end - window)
    return (sums[end] - sums[start]) / (end - start)


def plot_experiments(experiment_dirs: list[Path], out: Path | None = None, threshold: float = 200.0) -> Path:
    """Episode returns over env steps with their rolling mean, plus evaluation points, for each experiment.

    One experiment goes to `<dir>/<name>_learning_curve.png` unless `out` is given; several need `out` or go to
    results/plots/<name>_vs_<name>.png.
    """
    if out is not None:
        check_figure_path(Path(out))
    experiments = [ExperimentPaths.at(exp) for exp in experiment_dirs]
    curves = [_read_curves(paths) for paths in experiments]  # every file read before anything is drawn
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, (paths, (steps, returns, evals)) in enumerate(zip(experiments, curves)):
        color = f"C{i}"
        if len(returns):
            ax.scatter(steps, returns, s=3, alpha=0.15, color=color, label=f"{paths.name}: episode returns")
            ax.plot(steps, rolling_mean(returns), color=color, label=f"{paths.name}: mean of last 100")
        if evals:
            ax.plot(*zip(*evals), "o--", color=color, markersize=4, linewidth=0.8,
                    label=f"{paths.name}: deterministic evaluation")
    ax.axhline(threshold, color="grey", linestyle=":", linewidth=1, label=f"solved ({threshold:g})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    names = [paths.name for paths in experiments]
    ax.set_title(textwrap.fill(" vs ".join(names), 70))  # a long name (an env's options) wraps, as it fits
    # Below the axes, so that no entry hides the last evaluation at the right end of the curve.
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False,
                       markerscale=3)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)  # the scatter's faint points, shown plainly in the legend
    fig.tight_layout()
    if out is None:
        out = experiments[0].learning_curve if len(experiments) == 1 else (
            Path("results") / "plots" / ("_vs_".join(names) + ".png"))
    save_figure(fig, Path(out))
    plt.close(fig)
    return Path(out)


def plot_sweep_curves(curves: dict[str, list], title: str, path: Path, threshold: float) -> Path:
    """Mean training return over seeds with its 95% bootstrap band."""
    plt = pyplot()
    steps = np.array(curves["timestep"])
    as_array = lambda k: np.array([np.nan if v is None else v for v in curves[k]])  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.fill_between(steps, as_array("ci95_low"), as_array("ci95_high"), alpha=0.25, label="95% bootstrap CI")
    ax.plot(steps, as_array("mean"), label="mean over seeds")
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"solved ({threshold:g})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training return (last 100 episodes)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_learning_curve(experiment: Path) -> None:
    """The learning curve beside a finished run's results, when matplotlib (the `plot` extra) is installed and the
    disk takes it: the run has succeeded either way."""
    try:
        plot_experiments([experiment])
    except ImportError:
        log.debug("matplotlib not installed; no learning-curve PNG")
    except OSError as exc:
        log.warning("could not write the learning curve of %s (%s)", experiment, exc.strerror or exc)
