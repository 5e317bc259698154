"""Command line: `python -m jaxrl_lander train|reproduce|sweep|plot|evaluate ...` (also `jaxrl-lander ...`).

Usage and configuration errors, and an experiment that cannot be resumed, print one line and exit with status 2
before anything is written; a failure during training prints one line and exits with status 1. Ctrl-C stops a
training loop at its next step (exit 130, resumable); anywhere else it prints one line and exits with 130.
"""

import argparse
import json
import re
import logging
import os
import signal
import sys
from pathlib import Path

from jaxrl_lander.config import BACKENDS, CONFIG_CLASSES, load_config
from jaxrl_lander.config_docs import config_keys_help
from jaxrl_lander.errors import (ConfigError, ExperimentInUse, Interrupted, ResumeError, SweepFailed,
                                  TrainingFailed, UnreadableModel)
from jaxrl_lander.files import ExperimentPaths, check_writable, model_path
from jaxrl_lander.hooks import catch_interrupts, cpu_device_per_core, drop_read_failure_echoes
from jaxrl_lander.variants import OWN_OPTION, check_agents, parse_settings, sweep_variants

EXIT_USAGE = 2
EXIT_RUNTIME = 1
PROG = "jaxrl_lander"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(EXIT_USAGE)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default once, where it has one worth showing; the epilog (the config keys) as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, False, [], argparse.SUPPRESS) or "(default" in text:
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {default})"


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
    keys = config_keys_help(skip=OWN_OPTION)

    def command(name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)

    def results_dir(text: str) -> Path:
        if not text:  # Path("") is the current directory
            raise argparse.ArgumentTypeError("results directory must not be empty")
        return Path(text)

    def config_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--algo", required=True, choices=sorted(CONFIG_CLASSES), help="algorithm")
        p.add_argument("--steps", type=_int_arg("steps", 1), default=None,
                       help="total env steps (default: the config's total_timesteps, 50000 unless set)")
        p.add_argument("--backend", choices=BACKENDS, default=None,
                       help="env_backend: where training episodes are played (default: the config's, gymnasium)")
        p.add_argument("--config", type=Path, default=None,
                       help="TOML file of hyperparameters (see configs/); unset keys keep their defaults")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                       help="set one config key over the config file (repeatable), e.g. ent_coef=1e-3")
        p.add_argument("--results-dir", type=results_dir, default=Path("results"), help="where experiments are written")
        p.add_argument("--verbose", action="store_true", help="DEBUG logging (each update's losses)")

    for name, help in (("train", "train an agent, checkpointing and recording as it goes"),
                       ("reproduce", "train the same experiment twice and record SC-004 (reproducibility)")):
        p = command(name, help, keys)
        config_options(p)
        p.add_argument("--seed", type=_int_arg("seed", 0), default=None,
                       help="the run's one seed (default: the config's seed, 42 unless set)")
        p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    train = sub.choices["train"]
    train.add_argument("--resume", action="store_true", help="continue the experiment from its latest checkpoint")
    for p in (train, sub.choices["reproduce"]):
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing experiment of this algorithm and seed (once the new run has"
                            " committed its first checkpoint)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "tpu"],
                       help="where the update runs; auto: JAX's default device")
    train.add_argument("--act-device", default="auto", choices=["auto", "cpu", "gpu", "tpu"],
                       help="where the per-step action sampling runs; auto: the host CPU")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard event files to <experiment>/tensorboard (needs tensorboardX)")

    sweep = command("sweep", "train several seeds in parallel processes, then statistics over seeds and a plot", keys)
    config_options(sweep)
    sweep.add_argument("--seeds", type=_int_arg("seed", 0), nargs="+", default=[0, 1, 2, 3, 4], help="seeds")
    sweep.add_argument("--jobs", type=_int_arg("jobs", 1), default=None,
                       help="training processes at once (default: the number of CPUs)")
    sweep.add_argument("--name", default=None,
                       help="sweep name (default: the config file's stem, or the algorithm, then the --set items)")
    sweep.add_argument("--vectorized", action="store_true",
                       help="train every seed (and --set variant) as vectorised agents of one process, on envpool;"
                            " --set KEY=[A,B] trains one agent per value and seed")

    plot = command("plot", "learning-curve PNG of one experiment, or several side by side")
    plot.add_argument("experiments", type=Path, nargs="+", help="experiment directories")
    plot.add_argument("--out", type=Path, default=None,
                      help="PNG path (default: beside the results of one experiment, else results/plots/)")

    evaluate = command("evaluate", "play episodes with a trained agent and print their mean, std, min and max")
    evaluate.add_argument("experiment", type=Path, help="an experiment directory, e.g. results/experiments/ppo_seed42")
    evaluate.add_argument("--episodes", type=_int_arg("episodes", 1), default=10, help="episodes to play")
    evaluate.add_argument("--seed", type=_int_arg("seed", 0), default=None,
                          help="seed of the first episode (default: the seeds of the run's final evaluation)")
    evaluate.add_argument("--sample", action="store_true",
                          help="draw actions from the policy (a key seeded by --seed) instead of taking the argmax")
    evaluate.add_argument("--render", action="store_true",
                          help="also save one episode as <experiment>/<name>_episode.gif")
    return parser


def _config(args, seed: int | None):
    """The validated config of a command: file, then --set, then --seed, --steps and --backend (where given)."""
    given = (("seed", seed), ("total_timesteps", args.steps), ("env_backend", args.backend))
    options = {k: v for k, v in given if v is not None}
    return load_config(args.config, args.algo, {**parse_settings(args.algo, args.settings), **options})


def _run_config(args, seed: int | None, resume: bool = False):
    """The config of a command that trains, refused here (before the heavy imports) when train() would refuse it:
    a re-run over an existing experiment without --resume or --overwrite, an env the policy cannot drive."""
    config = _config(args, seed)
    check_writable(args.results_dir)
    from jaxrl_lander.claim import ExperimentLock, check_rerun
    from jaxrl_lander.envs import check_envs

    check_envs(config)
    paths = ExperimentPaths.of(args.results_dir, config.algo, config.seed)
    check_rerun(paths, resume, args.overwrite)
    ExperimentLock(paths).check()  # another process writing it: say so now (train() takes the lock for good)
    return config


def _train(args) -> int:
    config = _run_config(args, args.seed, args.resume)
    from jaxrl_lander.experiment import train  # heavy imports once the input is good

    results = train(config, args.results_dir, resume=args.resume, overwrite=args.overwrite, device=args.device,
                    act_device=args.act_device, tensorboard=args.tensorboard,
                    progress_bar=sys.stderr.isatty() and not args.quiet)
    if results.status == "interrupted":
        print(f"{results.experiment_id}: {results.reason}; checkpoint, metrics and results saved."
              " Continue with --resume.")
        return 128 + (signal.SIGTERM if "SIGTERM" in results.reason else signal.SIGINT)
    ev, resumed = results.evaluation, results.resumed_from_timestep
    speed = f"{results.steps_per_second or 0:.0f} steps/s" + (f" since the resume at step {resumed}" if resumed else "")
    print(f"{results.experiment_id}: {results.timestep} steps in {results.training_time_seconds:.1f} s of training"
          f" ({speed}) | evaluation over {ev['episodes']} episodes: {ev['mean']:.1f} +/- {ev['std']:.1f}"
          f" | artifacts in {results.experiment_dir}")
    return 0


def _reproduce(args) -> int:
    config = _run_config(args, args.seed)
    from jaxrl_lander.reproduce import reproduce  # it trains with train(), which checks the results directory

    results = reproduce(config, args.results_dir, overwrite=args.overwrite)
    verdict = results.reproducibility
    sc004 = "PASS" if results.success_criteria["SC-004"]["passed"] else "FAIL"
    print(f"{results.experiment_id}: SC-004 {sc004} | std of the final evaluation return over 2 runs:"
          f" {verdict['evaluation_mean_std']:.6f} | parameters identical: {verdict['params_identical']}"
          f" | metrics identical: {verdict['metrics_identical']}")
    return 0 if sc004 == "PASS" else 1


def _sweep(args) -> int:
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds has duplicates: {' '.join(map(str, args.seeds))}")
    if args.vectorized and args.jobs:
        raise ConfigError("--jobs has no meaning with --vectorized: every agent trains in one process")
    backend = args.backend or ("envpool" if args.vectorized else None)
    variants = {}
    for name, settings in sweep_variants(args.algo, args.settings).items():  # all valid before any training
        given = (("total_timesteps", args.steps), ("env_backend", backend))
        variants[name] = load_config(args.config, args.algo, {**settings, **{k: v for k, v in given if v is not None}})
    if args.vectorized:
        check_agents(list(variants.values()))
        cpu_device_per_core()
    from jaxrl_lander.envs import check_envs

    for config in variants.values():
        check_envs(config)
    check_writable(args.results_dir)  # before the sweep's own files
    from jaxrl_lander.sweep import run_sweep

    name = args.name or re.sub(r"[^\w.,=+-]", "_", "_".join([args.config.stem if args.config else args.algo,
                                                                 *args.settings]))
    if not name or re.search(r"[/*?\[\]]", name) or name.startswith("."):
        raise ConfigError(f"--name must be a plain directory name (no / * ? [ ]), got '{name}'")
    out_dir = args.results_dir / "sweeps" / name
    jobs = min(args.jobs or os.cpu_count() or 1, len(args.seeds))
    summaries = run_sweep(args.algo, args.seeds, variants, out_dir, jobs, vectorized=args.vectorized)
    for variant, summary in summaries.items():
        final = summary["final_evaluation"]
        print(f"{'/'.join(filter(None, (name, variant)))}: {len(args.seeds)} seeds | final evaluation mean"
              f" {final['mean']:.1f} [{final['mean_ci95'][0]:.1f}, {final['mean_ci95'][1]:.1f}] | IQM"
              f" {final['iqm']:.1f} [{final['iqm_ci95'][0]:.1f}, {final['iqm_ci95'][1]:.1f}] (95% bootstrap CIs)"
              f" | {summary['seeds_solved_at_end']}/{len(args.seeds)} seeds >= {summary['solve_threshold']:g}"
              f" | {out_dir / variant / 'summary.json'}")
    return 0


def _plot(args) -> int:
    for exp in args.experiments:
        if not exp.is_dir():
            raise ConfigError(f"no experiment directory {exp}")
    from jaxrl_lander.plotting import plot_experiments

    print(plot_experiments(args.experiments, args.out))
    return 0


def _evaluate(args) -> int:
    model_path(args.experiment)  # no model, or two: refused before the heavy imports
    from jaxrl_lander.evaluate import brief, evaluate_experiment, render_episode_gif

    summary = evaluate_experiment(args.experiment, args.episodes, args.seed, sample=args.sample)
    print(json.dumps(brief(summary)))
    if args.render:
        gif, episode_return = render_episode_gif(args.experiment, seed=args.seed, sample=args.sample)
        print(f"rendered one episode (return {episode_return:.1f}) to {gif}")
    return 0


def _configure_logging(verbose: bool, quiet: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("jaxrl_lander").setLevel(level)
    for noisy in ("absl", "orbax", "jax"):  # their failures reach us as exceptions, told in one line
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    commands = {"train": _train, "reproduce": _reproduce, "sweep": _sweep, "plot": _plot, "evaluate": _evaluate}
    try:
        catch_interrupts()
        args = build_parser().parse_args(argv)
        _configure_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
        drop_read_failure_echoes()
        return commands[args.command](args)
    except (ConfigError, ResumeError, ExperimentInUse, UnreadableModel, FileNotFoundError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")  # refused before anything was written
        return EXIT_USAGE
    except TrainingFailed as exc:
        sys.stderr.write(f"{PROG}: training failed: {exc}\n")
        if str(exc).startswith("could not"):  # a failed write: orbax's threads may wait on it for 5 minutes,
            sys.stdout.flush(), sys.stderr.flush()  # which exit would join; what was committed is on disk
            os._exit(EXIT_RUNTIME)
        return EXIT_RUNTIME
    except SweepFailed as exc:
        sys.stderr.write(f"{PROG}: sweep failed: {exc}\n")
        return EXIT_RUNTIME
    except Interrupted as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 128 + exc.signum
    except OSError as exc:  # e.g. the disk filled up while writing
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_RUNTIME
    except KeyboardInterrupt:  # Ctrl-C outside the training loop's own handling, or a second one during its stop
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 128 + signal.SIGINT
