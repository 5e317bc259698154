"""Learning-curve PNGs (matplotlib, from the `plot` extra): one experiment, several side by side, or a sweep."""

import json
from pathlib import Path

import numpy as np

from jaxrl_lander.recording import RECENT_EPISODES, replaced_atomically


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write the figure to a temporary file beside `path` and rename it into place."""
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp)
    return path


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    names = []
    for i, exp in enumerate(experiment_dirs):
        exp = Path(exp)
        name = exp.name
        metrics = _load(exp / f"{name}_metrics.json")
        if metrics is None:
            raise FileNotFoundError(f"no metrics file in {exp}")
        results = _load(exp / f"{name}_results.json")
        names.append(name)
        color = f"C{i}"
        steps = np.array([e["timestep"] for e in metrics["episodes"]])
        returns = np.array([e["return"] for e in metrics["episodes"]])
        if len(returns):
            ax.scatter(steps, returns, s=3, alpha=0.15, color=color)
            ax.plot(steps, rolling_mean(returns), color=color, label=f"{name}: mean of last 100")
        if results:
            evals = [(e["timestep"], e["mean"]) for e in results.get("evaluations_during_training", [])]
            if results.get("evaluation"):
                evals.append((results.get("timestep", results["total_timesteps"]), results["evaluation"]["mean"]))
            if evals:
                ax.plot(*zip(*evals), "o--", color=color, markersize=4, linewidth=0.8,
                        label=f"{name}: deterministic evaluation")
    ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(" vs ".join(names))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    if out is None:
        if len(experiment_dirs) == 1:
            out = Path(experiment_dirs[0]) / f"{names[0]}_learning_curve.png"
        else:
            out = Path("results") / "plots" / ("_vs_".join(names) + ".png")
    save_figure(fig, Path(out))
    plt.close(fig)
    return Path(out)


def plot_sweep_curves(curves: dict[str, list], title: str, path: Path, threshold: float) -> Path:
    """Mean training return over seeds with its 95% bootstrap band."""
    plt = _pyplot()
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
