"""What a tuning study writes beside its trials: study.json (every trial), best.toml (the best complete trial's
config, the seed left to the command) and PNGs of the optimisation history and the parameter importances."""

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from jaxrl_lander.config import config_to_toml, make_config
from jaxrl_lander.config.errors import first_line
from jaxrl_lander.storage.files import replaced_atomically, write_json_atomic
from jaxrl_lander.config.redact import redact

log = logging.getLogger("jaxrl_lander.studies.tune")
# The cause of a FAIL trial that no worker recorded: Optuna failed it when its heartbeats stopped
NO_HEARTBEAT = "its worker stopped sending heartbeats (killed, or stalled for three of them)"


def write_report(study: optuna.Study, trials: list[FrozenTrial], header: dict[str, Any], out_dir: Path,
                 plots: bool = False) -> dict[str, Any]:
    """study.json (`header`, the best trial, every trial), best.toml and, with `plots`, the PNGs; returns what
    study.json holds. Every file is replaced whole (workers may write at once; the last write wins)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    data = {**header,
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                                 "config": str(out_dir / "best.toml")},
            "trials": [_trial_row(t) for t in trials]}
    write_json_atomic(out_dir / "study.json", data)
    if best is not None:
        config = make_config(header["base_config"]["algo"], best.user_attrs["config"])
        with replaced_atomically(out_dir / "best.toml") as tmp:
            tmp.write_text(f"# The best trial ({best.number}) of study '{header['study']}': objective {best.value:.1f},"
                           f" final evaluation {best.user_attrs['final_evaluation']:.1f}.\n"
                           f"# The seed is the command's: make train CONFIG=<this file> SEED=...\n"
                           + config_to_toml(config, omit=("seed",)))
    if plots:
        _plots(study, len(complete), out_dir)
    return data


def _plots(study: optuna.Study, complete: int, out_dir: Path) -> None:
    from jaxrl_lander.outputs.plotting import pyplot, save_figure

    try:
        from optuna.visualization import matplotlib as vis

        plt = pyplot()
    except ImportError:  # the study's report stands without its pictures
        log.warning("no history.png or importances.png: matplotlib (the plot extra) is not installed")
        return
    for name, draw, needs in (("history.png", vis.plot_optimization_history, 1),
                              ("importances.png", vis.plot_param_importances, 2)):
        if complete < needs:
            log.info("no %s: it needs %d complete trial(s), the study has %d", name, needs, complete)
            continue
        try:
            axes = draw(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances of a space no trial varied
            log.info("no %s: %s", name, first_line(exc))
            continue
        axes.figure.set_size_inches(9, 5)
        axes.figure.tight_layout()  # the parameter names and the legend inside the picture
        save_figure(axes.figure, out_dir / name)
        plt.close(axes.figure)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration else None
    attrs = {k: redact(v) if isinstance(v, str) else v for k, v in t.user_attrs.items() if k != "config"}
    if t.state == TrialState.FAIL and "failure" not in attrs and "surplus" not in attrs:
        attrs["failure"] = NO_HEARTBEAT
    return {"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
            "duration_seconds": duration, "retry_of": t.system_attrs.get("failed_trial"),
            "intermediate_values": {str(step): v for step, v in sorted(t.intermediate_values.items())}, **attrs}
