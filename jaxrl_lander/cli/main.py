"""Command line: `python -m jaxrl_lander train|reproduce|sweep|tune|plot|evaluate ...` (also `jaxrl-lander ...`).

Usage and configuration errors, and an experiment that cannot be resumed, print one line and exit with status 2
before anything is written; a failure during training prints one line and exits with status 1. Ctrl-C stops a
training loop at its next step (exit 130, resumable); anywhere else it prints one line and exits with 130.
"""

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from jaxrl_lander.cli.commands import COMMANDS
from jaxrl_lander.config import BACKENDS, CONFIG_CLASSES, read_toml
from jaxrl_lander.config.docs import config_keys_help
from jaxrl_lander.config.errors import (EXTRAS, ConfigError, ExperimentInUse, Interrupted, ResumeError, SweepFailed,
                                  TrainingFailed, UnreadableModel, first_line, install_hint, out_of_memory)
from jaxrl_lander.cli.hooks import catch_interrupts, drop_read_failure_echoes, envpool_box2d_only
from jaxrl_lander.config.redact import RedactingFilter, redact, shorten
from jaxrl_lander.config.variants import OWN_OPTION

EXIT_USAGE = 2
EXIT_RUNTIME = 1
PROG = "jaxrl_lander"
MAX_LINE = 1000  # characters of an error line


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        _say("error: ", message)
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
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {shorten(text)}") from None
        if value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {value}")
        if name == "seed" and value >= 2**32:  # numpy's seed range, as the config checks it
            raise argparse.ArgumentTypeError(f"seed must be below 2**32, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="PPO and A2C on gymnasium's LunarLander-v3, in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    keys = config_keys_help(options=OWN_OPTION)

    def command(name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)

    def results_dir(text: str) -> Path:
        if not text:  # Path("") is the current directory
            raise argparse.ArgumentTypeError("results directory must not be empty")
        return Path(text)

    def config_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--algo", choices=sorted(CONFIG_CLASSES), default=None,
                       help="algorithm (default: the --config file's algo)")
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
    train.add_argument("--init-from", type=Path, default=None, metavar="PATH",
                       help="start from the parameters and normaliser statistics of another experiment's model (its"
                            " directory or the model's), with a fresh optimiser; the config may change anything but"
                            " the network")
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

    sweep = command("sweep", "train several seeds (in parallel processes, or --vectorized in one), then statistics"
                             " over seeds and a plot", keys)
    config_options(sweep)
    sweep.add_argument("--seeds", type=_int_arg("seed", 0), nargs="+", default=[0, 1, 2, 3, 4], help="seeds")
    sweep.add_argument("--jobs", type=_int_arg("jobs", 1), default=None,
                       help="training processes at once (default: the number of CPUs)")
    sweep.add_argument("--name", default=None,
                       help="sweep name (default: the config file's stem, or the algorithm, then the --set items)")
    sweep.add_argument("--vectorized", action="store_true",
                       help="train every seed (and --set variant) as vectorised agents of one process, on envpool"
                            " (the default --backend then); --set KEY=[A,B] trains one agent per value and seed")

    tune = command("tune", "search hyperparameters: an Optuna study whose trials are training runs, pruned early", keys)
    config_options(tune)
    tune.add_argument("--space", type=Path, required=True, help="search space TOML (configs/tune_<algo>.toml)")
    tune.add_argument("--trials", type=_int_arg("trials", 1), default=50,
                      help="the study's total trials, whichever workers run them")
    tune.add_argument("--seed", type=_int_arg("seed", 0), default=None,
                      help="the seed every trial trains (default: the config's, 42 unless set)")
    tune.add_argument("--seeds", type=_int_arg("seed", 0), nargs="+", default=None,
                      help="seeds every trial trains as vectorised agents (needs --backend envpool), scored by their IQM")
    tune.add_argument("--study", default=None, help="study name (default: the space file's stem without 'tune_')")
    tune.add_argument("--storage", default=None, help="Optuna storage URL shared by workers, e.g. postgresql://..."
                                                      " (default: $JAXRL_LANDER_STORAGE, which keeps a password off"
                                                      " the command line, else a SQLite file in the study's"
                                                      " directory)")
    tune.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                      help="how trials are stopped early on their evaluations during training")
    tune.add_argument("--heartbeat", type=_int_arg("heartbeat", 1), default=30,
                      help="seconds between a trial's heartbeats; a trial silent for 3 of them is retried")
    tune.add_argument("--timeout", type=_int_arg("timeout", 1), default=None,
                      help="seconds after which a worker starts no new trial (those in hand finish)")
    tune.add_argument("--jobs", type=_int_arg("jobs", 1), default=None,
                      help="worker processes running trials at once (default: one per CPU core)")
    tune.add_argument("--quiet", action="store_true", help="no line per trial")
    tune.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --jobs' processes

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
    evaluate.add_argument("--json", action="store_true",
                          help="print the summary as one JSON object (episodes, mean, std, min, max)")
    evaluate.add_argument("--render", action="store_true",
                          help="also save one episode as <experiment>/<name>_episode.gif")
    return parser


def _configure_logging(verbose: bool, quiet: bool, tuning: bool = False) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # no password reaches a log line
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("jaxrl_lander").setLevel(level)
    if tuning:  # a line per trial, not the trials' progress lines
        logging.getLogger("jaxrl_lander").setLevel(logging.DEBUG if verbose else logging.WARNING)
        logging.getLogger("jaxrl_lander.studies.tune").setLevel(logging.WARNING if quiet else logging.INFO)
    for noisy in ("absl", "orbax", "jax"):  # their failures reach us as exceptions, told in one line
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def _resolve_algo(args: argparse.Namespace) -> None:
    """--algo, or else the algo that the --config file (for tune, the --space file) names."""
    if not hasattr(args, "algo") or args.algo is not None:
        return
    for path in (getattr(args, "config", None), getattr(args, "space", None)):
        if path is not None and "algo" in (values := read_toml(path)):
            if values["algo"] not in CONFIG_CLASSES:
                raise ConfigError(f"{path}: algo must be one of {', '.join(sorted(CONFIG_CLASSES))}, got"
                                  f" {shorten(values['algo'])}")
            args.algo = values["algo"]
            return
    raise ConfigError("the following arguments are required: --algo (or a --config file that sets algo)")


def _say(prefix: str, message: object) -> None:
    """One line on stderr: the message's lines joined, any password masked, at most MAX_LINE characters."""
    text = redact(" ".join(str(message).split()))
    sys.stderr.write(f"{PROG}: {prefix}{text if len(text) <= MAX_LINE else text[:MAX_LINE - 3] + '...'}\n")


def _os_error(exc: OSError) -> str:
    """An OSError as words and the file it names (str() of one shows a Path's repr)."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    command = None
    try:
        catch_interrupts()
        envpool_box2d_only()
        args = build_parser().parse_args(argv)
        command = args.command
        args.argv = list(sys.argv[1:] if argv is None else argv)  # a tuning study's workers run it again
        _configure_logging(getattr(args, "verbose", False), getattr(args, "quiet", False), args.command == "tune")
        drop_read_failure_echoes()
        _resolve_algo(args)
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a reader gone (| head) is caught, not at the interpreter's exit
        return code
    except (ConfigError, ResumeError, ExperimentInUse, UnreadableModel) as exc:
        _say("error: ", exc)  # refused before anything was written
        return EXIT_USAGE
    except ModuleNotFoundError as exc:  # an optional extra the command needs, not installed
        module = (exc.name or "").partition(".")[0]
        if module not in EXTRAS:
            raise
        _say("error: ", f"this needs {exc.name}, which is not installed: {install_hint(module)}")
        return EXIT_USAGE
    except FileNotFoundError as exc:
        _say("error: ", _os_error(exc))
        return EXIT_USAGE
    except TrainingFailed as exc:
        fixed = exc.write_failed and command == "train"  # (a study, a sweep: the same command goes on)
        _say("training failed: ", f"{exc}{', and --resume continues from it once that is fixed' if fixed else ''}")
        if exc.write_failed:  # orbax's threads may wait on a failed write for 5 minutes,
            sys.stdout.flush(), sys.stderr.flush()  # which exit would join; what was committed is on disk
            os._exit(EXIT_RUNTIME)
        return EXIT_RUNTIME
    except SweepFailed as exc:
        _say("sweep failed: ", exc)
        return EXIT_RUNTIME
    except Interrupted as exc:
        _say("", exc)
        return 128 + exc.signum
    except BrokenPipeError:  # stdout closed by its reader (| head): what the command did is done, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:  # e.g. the disk filled up while writing
        _say("error: ", _os_error(exc))
        return EXIT_RUNTIME
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside the training loop's own handling, or a second
        signum = getattr(exc, "signum", signal.SIGINT)  # signal during its stop
        _say("", "terminated" if signum == signal.SIGTERM else "interrupted")
        return 128 + signum
    except Exception as exc:
        if not out_of_memory(exc):
            raise
        _say("out of memory: ", f"{first_line(exc)}; hidden_size, num_envs and n_steps set what a run needs;"
                                " checkpoints already committed are kept")
        return EXIT_RUNTIME
