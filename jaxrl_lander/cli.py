"""Command line: `python -m jaxrl_lander train|evaluate ...`.

Usage and configuration errors, and an experiment that cannot be resumed, print one line and exit with status 2
before anything is written; a failure during training prints one line and exits with status 1.
"""

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from jaxrl_lander.config import CONFIG_CLASSES, ConfigError, load_config
from jaxrl_lander.errors import ResumeError, SweepFailed, TrainingFailed, UnreadableModel

EXIT_USAGE = 2
EXIT_RUNTIME = 1
PROG = "jaxrl_lander"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _int_arg(name: str, minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="PPO and A2C on gymnasium's LunarLander-v3, in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    run_options = OneLineParser(add_help=False)
    run_options.add_argument("--algo", required=True, choices=sorted(CONFIG_CLASSES), help="algorithm")
    run_options.add_argument("--seed", type=_int_arg("seed", 0), default=42, help="the run's one seed")
    run_options.add_argument("--steps", type=_int_arg("steps", 1), default=None,
                             help="total environment steps (default: the config's total_timesteps, 50000)")
    run_options.add_argument("--config", type=Path, default=None,
                             help="TOML file of hyperparameters (see configs/); unset keys keep their defaults")
    run_options.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                             help="set one hyperparameter over the config file (repeatable), e.g. ent_coef=1e-3")
    run_options.add_argument("--results-dir", type=Path, default=Path("results"),
                             help="where experiments are written")
    run_options.add_argument("--verbose", action="store_true", help="DEBUG logging (per-update losses)")
    run_options.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")

    train = sub.add_parser("train", parents=[run_options], formatter_class=defaults,
                           help="train an agent, checkpointing and recording as it goes")
    train.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "tpu"],
                       help="where the update runs (auto: JAX's default device)")
    train.add_argument("--act-device", default="auto", choices=["auto", "cpu", "gpu", "tpu"],
                       help="where the per-step action sampling runs (auto: the host CPU)")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard event files to <experiment>/tensorboard (needs tensorboardX)")
    sub.add_parser("reproduce", parents=[run_options], formatter_class=defaults,
                   help="train the same experiment twice and record SC-004 (reproducibility) in its results")

    sweep = sub.add_parser("sweep", formatter_class=defaults,
                           help="train several seeds in parallel processes, then statistics over seeds and a plot")
    sweep.add_argument("--algo", required=True, choices=sorted(CONFIG_CLASSES), help="algorithm")
    sweep.add_argument("--seeds", type=_int_arg("seed", 0), nargs="+", default=[0, 1, 2, 3, 4], help="seeds")
    sweep.add_argument("--steps", type=_int_arg("steps", 1), default=None, help="total env steps per seed")
    sweep.add_argument("--config", type=Path, default=None, help="TOML file of hyperparameters")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                       help="set one hyperparameter over the config file (repeatable)")
    sweep.add_argument("--jobs", type=_int_arg("jobs", 1), default=os.cpu_count() or 1,
                       help="training processes at once")
    sweep.add_argument("--name", default=None,
                       help="sweep name (default: the config file's stem, or the algorithm)")
    sweep.add_argument("--results-dir", type=Path, default=Path("results"), help="sweeps go to RESULTS_DIR/sweeps")
    sweep.add_argument("--verbose", action="store_true", help="DEBUG logging")

    plot = sub.add_parser("plot", formatter_class=defaults,
                          help="learning-curve PNG of one experiment, or several side by side")
    plot.add_argument("experiments", type=Path, nargs="+", help="experiment directories")
    plot.add_argument("--out", type=Path, default=None,
                      help="PNG path (default: beside the results of one experiment, else results/plots/)")

    evaluate = sub.add_parser("evaluate", help="play deterministic episodes with a trained agent",
                              formatter_class=defaults)
    evaluate.add_argument("experiment", type=Path, help="an experiment directory, e.g. results/experiments/ppo_seed42")
    evaluate.add_argument("--episodes", type=_int_arg("episodes", 1), default=10, help="episodes to play")
    evaluate.add_argument("--seed", type=_int_arg("seed", 0), default=None,
                          help="seed of the first episode (default: the experiment's evaluation seeds)")
    evaluate.add_argument("--sample", action="store_true",
                          help="draw actions from the policy (a key seeded by --seed) instead of taking the argmax")
    evaluate.add_argument("--render", action="store_true",
                          help="also save one episode as <experiment>/<name>_episode.gif")
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        level=logging.WARNING)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("jaxrl_lander").setLevel(level)
    for noisy in ("absl", "orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _run_config(args):
    """The validated config of a train/reproduce command; raises ConfigError before anything is written."""
    overrides = {"seed": args.seed}
    if args.steps is not None:
        overrides["total_timesteps"] = args.steps
    config = load_config(args.algo, args.config, overrides, args.settings)
    _check_writable(args.results_dir)
    from jaxrl_lander.train import enable_compilation_cache  # heavy imports once the input is good

    enable_compilation_cache()
    return config


def _train(args) -> int:
    config = _run_config(args)
    if args.tensorboard:
        from jaxrl_lander.tensorboard import require_tensorboard

        require_tensorboard()
    from jaxrl_lander.train import Trainer

    trainer = Trainer(config, args.results_dir, device=args.device, act_device=args.act_device,
                      progress_bar=sys.stderr.isatty() and not args.quiet, tensorboard=args.tensorboard)
    results = trainer.train(resume=args.resume)
    _plot_quietly(trainer.paths.root)
    if results["status"] == "interrupted":
        print(f"{results['experiment_id']}: {results['reason']}; checkpoint, metrics and results saved."
              " Continue with --resume.")
        return 128 + (signal.SIGTERM if "SIGTERM" in results["reason"] else signal.SIGINT)
    ev = results["evaluation"]
    print(
        f"{results['experiment_id']}: {results['total_timesteps']} steps in {results['training_time_seconds']:.1f} s"
        f" ({results['steps_per_second'] or 0:.0f} steps/s) | evaluation over {ev['episodes']} episodes:"
        f" {ev['mean']:.1f} +/- {ev['std']:.1f} | artifacts in {results['artifacts']['experiment_dir']}"
    )
    return 0


def _plot_quietly(experiment: Path) -> None:
    """The learning curve beside the results, when matplotlib (the `plot` extra) is installed."""
    try:
        from jaxrl_lander.plotting import plot_experiments

        plot_experiments([experiment])
    except ImportError:
        logging.getLogger("jaxrl_lander").debug("matplotlib not installed; no learning-curve PNG")


def _plot(args) -> int:
    from jaxrl_lander.plotting import plot_experiments

    for exp in args.experiments:
        if not exp.is_dir():
            raise ConfigError(f"no experiment directory {exp}")
    print(plot_experiments(args.experiments, args.out))
    return 0


def _check_writable(results_dir: Path) -> None:
    probe = results_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"results directory {results_dir} is not writable")


def _reproduce(args) -> int:
    config = _run_config(args)
    from jaxrl_lander.reproduce import reproduce

    verdict = reproduce(config, args.results_dir)["reproducibility"]
    sc004 = "PASS" if verdict["evaluation_mean_std"] < 0.01 else "FAIL"
    print(
        f"{config.algo}_seed{config.seed}: SC-004 {sc004} | std of the final evaluation return over 2 runs:"
        f" {verdict['evaluation_mean_std']:.6f} | parameters identical: {verdict['params_identical']}"
        f" | metrics identical: {verdict['metrics_identical']}"
    )
    return 0 if sc004 == "PASS" else 1


def _sweep(args) -> int:
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds has duplicates: {' '.join(map(str, args.seeds))}")
    for seed in args.seeds:  # every seed's config must be valid before any process starts
        overrides = {"seed": seed, **({"total_timesteps": args.steps} if args.steps else {})}
        config = load_config(args.algo, args.config, overrides, args.settings)  # they differ in the seed alone
    _check_writable(args.results_dir)
    from jaxrl_lander.sweep import run_sweep

    name = args.name or "_".join([args.config.stem if args.config else args.algo, *args.settings])
    out_dir = args.results_dir / "sweeps" / name
    summary = run_sweep(args.algo, args.seeds, config, out_dir, min(args.jobs, len(args.seeds)))
    final = summary["final_evaluation"]
    print(
        f"{name}: {len(args.seeds)} seeds | final evaluation mean {final['mean']:.1f}"
        f" [{final['mean_ci95'][0]:.1f}, {final['mean_ci95'][1]:.1f}] | IQM {final['iqm']:.1f}"
        f" [{final['iqm_ci95'][0]:.1f}, {final['iqm_ci95'][1]:.1f}] (95% bootstrap CIs)"
        f" | {summary['seeds_solved_at_end']}/{len(args.seeds)} seeds >= {summary['solve_threshold']:g}"
        f" | {out_dir / 'summary.json'}"
    )
    return 0


def _evaluate(args) -> int:
    from jaxrl_lander.evaluate import brief, evaluate_experiment

    summary = evaluate_experiment(args.experiment, args.episodes, args.seed, sample=args.sample)
    print(json.dumps(brief(summary)))
    if args.render:
        from jaxrl_lander.evaluate import render_episode_gif

        gif, episode_return = render_episode_gif(args.experiment, seed=args.seed, sample=args.sample)
        print(f"rendered one episode (return {episode_return:.1f}) to {gif}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    try:
        commands = {"train": _train, "reproduce": _reproduce, "sweep": _sweep, "plot": _plot, "evaluate": _evaluate}
        command = commands[args.command]
        return command(args)
    except (ConfigError, ResumeError, UnreadableModel, FileNotFoundError) as exc:  # refused before anything was written
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except TrainingFailed as exc:
        sys.stderr.write(f"{PROG}: training failed: {exc}\n")
        return EXIT_RUNTIME
    except SweepFailed as exc:
        sys.stderr.write(f"{PROG}: sweep failed: {exc}\n")
        return EXIT_RUNTIME
    except OSError as exc:  # e.g. the disk filled up while writing
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_RUNTIME
