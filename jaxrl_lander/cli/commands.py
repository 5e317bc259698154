"""What each command of the command line does, once its arguments are parsed (cli.py parses and reports)."""

import contextlib
import dataclasses
import json
import os
import re
import signal
import sys

from jaxrl_lander.config import ENV_OPTIONS, load_config
from jaxrl_lander.config.errors import ConfigError
from jaxrl_lander.storage.files import MAX_NAME, ExperimentPaths, check_results_dir, check_writable, model_path, plain_name
from jaxrl_lander.cli.hooks import cpu_device_per_core
from jaxrl_lander.config.redact import redact, shorten
from jaxrl_lander.config.variants import check_agents, parse_settings, sweep_variants


def say(text: str) -> None:
    """A command's line on stdout, any password in it masked (a path or a name may hold a URL)."""
    print(redact(str(text)))


def _config(args, seed: int | None):
    """The validated config of a command: file, then --set, then --seed, --steps and --backend (where given)."""
    given = (("seed", seed), ("total_timesteps", args.steps), ("env_backend", args.backend))
    options = {k: v for k, v in given if v is not None}
    return load_config(args.config, args.algo, {**parse_settings(args.algo, args.settings), **options})


def _run_config(args, seed: int | None, resume: bool = False):
    """The config of a command that trains, refused here (before the heavy imports) when train() would refuse it:
    a re-run over an existing experiment without --resume or --overwrite, an env the policy cannot drive."""
    config = _config(args, seed)
    check_results_dir(args.results_dir)
    from jaxrl_lander.storage.claim import ExperimentLock, check_rerun
    from jaxrl_lander.envs import check_envs

    check_envs(config)
    paths = ExperimentPaths.of(args.results_dir, config)
    check_writable(paths.root, f"experiment {paths.root}")
    ExperimentLock(paths).check()  # another process writing it: say so now (train() takes the lock for good)
    check_rerun(paths, resume, args.overwrite, can_resume=args.command == "train")
    return config


def _train(args) -> int:
    config = _run_config(args, args.seed, args.resume)
    from jaxrl_lander.training.run import train  # heavy imports once the input is good
    from jaxrl_lander.storage.metrics import now_iso

    started = now_iso()
    results = train(config, args.results_dir, resume=args.resume, overwrite=args.overwrite, device=args.device,
                    act_device=args.act_device, tensorboard=args.tensorboard,
                    progress_bar=sys.stderr.isatty() and not args.quiet, init_from=args.init_from)
    if results.status == "interrupted":
        say(f"{results.experiment_id}: {results.reason}; checkpoint, metrics and results saved."
            " Continue with --resume.")
        return 128 + signal.Signals[results.stop]
    ev, resumed = results.evaluation, results.resumed_from_timestep
    if results.end_time < started:  # a finished run, resumed: nothing was trained now
        speed = f"finished on {results.end_time[:10]}; nothing to do"
    elif resumed is not None and resumed >= results.timestep:
        speed = f"nothing left to train after the resume at step {resumed}"
    else:
        speed = f"{results.steps_per_second or 0:.0f} steps/s" + (f" since the resume at step {resumed}"
                                                                 if resumed else "")
    where = ExperimentPaths.of(args.results_dir, config).root
    say(f"{results.experiment_id}: {results.timestep} steps in {results.training_time_seconds:.1f} s of training"
        f" ({speed}) | evaluation over {ev['episodes']} episodes: {ev['mean']:.1f} +/- {ev['std']:.1f}"
        f" | artifacts in {where}")
    if not results.success_criteria["SC-006"]["passed"]:
        say(_not_solved(results, args.config))
    return 0


# The shipped config that lands for an algorithm on an env, and the steps it takes:
# (algo, env_id, env options as sorted items) -> (config stem, steps)
SOLVING = {("ppo", "LunarLander-v3", ()): ("ppo_solve", 500_000),
           ("a2c", "LunarLander-v3", ()): ("a2c_solve", 1_000_000),
           ("ppo", "LunarLanderContinuous-v3", ()): ("ppo_continuous_solve", 1_000_000),
           ("ppo", "LunarLander-v3", (("enable_wind", True),)): ("ppo_windy", 1_000_000)}


def _not_solved(results, config_file) -> str:
    """What a run that does not land (SC-006) should know: whether its budget could have, and which shipped
    config lands on its env."""
    config, mean = results.config, results.evaluation["mean"]
    line = f"SC-006 not met: {mean:.1f} is not above solve_threshold {config.solve_threshold:g}"
    solve, steps = SOLVING.get((config.algo, config.env_id, tuple(sorted(config.env_options().items()))), (None, 0))
    if solve is None or config.total_timesteps >= min(200_000, steps):
        return line
    if config.env_id == "LunarLander-v3" and not config.env_options():
        line += (f"; {config.total_timesteps:,} steps are too few to land, for Stable-Baselines3 too (the seed"
                 " experiment's 50,000 end between -600 and -400 on both: docs/experiments.md, Parity)")
    else:
        line += f"; {config.total_timesteps:,} steps are too few to land"
    if config_file is None or config_file.stem != solve:
        line += f"; configs/{solve}.toml lands"
    return line


def _reproduce(args) -> int:
    config = _run_config(args, args.seed)
    from jaxrl_lander.studies.reproduce import reproduce  # it trains with train(), which checks the results directory

    results = reproduce(config, args.results_dir, overwrite=args.overwrite)
    verdict = results.reproducibility
    sc004 = "PASS" if results.success_criteria["SC-004"]["passed"] else "FAIL"
    say(f"{results.experiment_id}: SC-004 {sc004} | std of the final evaluation return over 2 runs:"
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
        if backend != "envpool":
            raise ConfigError("vectorised agents run on the envpool backend only (--backend envpool)")
        check_agents(list(variants.values()))
        cpu_device_per_core()
    from jaxrl_lander.envs import check_envs

    for config in variants.values():
        check_envs(config)
    check_results_dir(args.results_dir)  # before the sweep's own files
    from jaxrl_lander.studies.sweep import run_sweep

    derived = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", "_".join([args.config.stem if args.config else args.algo,
                                                            *args.settings]))
    if args.name is None and len(derived) > MAX_NAME:
        raise ConfigError(f"the sweep's name made of its config and --set items is {len(derived)} characters long,"
                          f" over {MAX_NAME}: give it a --name")
    name = plain_name(args.name or derived, "--name")
    out_dir = args.results_dir / "sweeps" / name
    from jaxrl_lander.storage.claim import ExperimentLock

    # A seed still written by a process of an earlier sweep (orphaned by a kill).
    for variant, config in variants.items():
        for seed in args.seeds:
            ExperimentLock(ExperimentPaths.of(out_dir / variant if variant else out_dir,
                                              dataclasses.replace(config, seed=seed))).check()
    jobs = min(args.jobs or os.cpu_count() or 1, len(args.seeds))
    summaries = run_sweep(args.algo, args.seeds, variants, out_dir, jobs, vectorized=args.vectorized)
    for variant, summary in summaries.items():
        final = summary["final_evaluation"]
        say(f"{'/'.join(filter(None, (name, variant)))}: {len(summary['seeds'])} seeds | final evaluation mean"
            f" {final['mean']:.1f} [{final['mean_ci95'][0]:.1f}, {final['mean_ci95'][1]:.1f}] | IQM"
            f" {final['iqm']:.1f} [{final['iqm_ci95'][0]:.1f}, {final['iqm_ci95'][1]:.1f}] (95% bootstrap CIs)"
            f" | {summary['seeds_solved_at_end']}/{len(summary['seeds'])} seeds >= {summary['solve_threshold']:g}"
            f" | {out_dir / variant / 'summary.json'}")
    return 0


def _tune(args) -> int:
    from jaxrl_lander.studies.tune_space import read_space

    space = read_space(args.space, args.algo)
    if args.seeds and (args.seed is not None or len(set(args.seeds)) < len(args.seeds)):
        raise ConfigError("--seeds: give distinct seeds, and not --seed beside them")
    seed = args.seeds[0] if args.seeds else args.seed
    given = (("seed", seed), ("total_timesteps", args.steps), ("env_backend", args.backend))
    settings = parse_settings(args.algo, args.settings)
    if set(settings) & set(space.ranges):
        raise ConfigError(f"--set {sorted(set(settings) & set(space.ranges))[0]}: that key is tuned by {args.space}")
    try:
        base = load_config(args.config, args.algo, {**space.settings, **settings,
                                                    **{k: v for k, v in given if v is not None}})
    except ConfigError as exc:
        raise ConfigError(f"the study's base config ({args.space} [settings], with --config, --set, --steps): {exc}"
                          ) from None
    name = plain_name(args.space.stem.removeprefix("tune_") if args.study is None else args.study, "--study")
    if args.seeds and len(args.seeds) > 1:  # each trial trains them as vectorised agents
        check_agents([load_config(None, base.algo, {**base.to_dict(), "seed": s}) for s in args.seeds])
        cpu_device_per_core()
    from jaxrl_lander.envs import check_envs

    check_envs(base)
    # every env a trial may draw, and values whose check involves them, before any trial trains
    for key in ("env_id", "env_backend", *ENV_OPTIONS, "log_std_init"):
        spec = space.ranges.get(key, {})
        for what, value in [("choice", c) for c in spec.get("choices", ())] + [
                (bound, spec[bound]) for bound in ("low", "high") if bound in spec]:
            try:
                check_envs(load_config(None, base.algo, {**base.to_dict(), key: value}))
            except ConfigError as exc:
                raise ConfigError(f"{args.space}: {key} {what} {shorten(value)}: {exc}") from None
    check_results_dir(args.results_dir)
    from jaxrl_lander.studies.tune import Study, unprunable
    from jaxrl_lander.studies.tune_storage import STORAGE_ENV

    if args.storage == "":
        raise ConfigError("--storage must not be empty (leave it out for a SQLite file in the study's directory)")
    storage = args.storage or os.environ.get(STORAGE_ENV)  # a worker's: never on its command line
    study = Study(name, base, space, args.trials, args.results_dir / "tuning" / name, storage, args.pruner,
                  args.heartbeat, args.timeout, args.seeds)
    jobs = args.jobs or os.cpu_count() or 1
    if args.worker:  # one of the processes below: trials only
        study.run_as_worker()
        return 0
    if unprunable(base):  # said once, by the command, not by each worker
        import logging

        logging.getLogger("jaxrl_lander.studies.tune").warning(unprunable(base))
    try:
        if jobs == 1:
            study.run()
        else:
            study.run_workers(args.argv, jobs)
    except BaseException:
        with contextlib.suppress(Exception):  # the report of what was done; the error is the one to tell
            study.report(plots=True)
        raise
    data = study.report(plots=True)
    refused = [t["refused"] for t in data["trials"] if "refused" in t]
    if data["trials_counted"] >= args.trials and refused and len(refused) == data["trials_counted"]:
        raise ConfigError(f"study {name}: the config refused every trial's values (the last: {refused[-1]}); change"
                          f" {args.space} or the study's config")
    best = data["best"]
    say(f"study {name}: {data['trials_counted']} of {args.trials} trials | " + (
      f"best trial {best['number']}: objective {best['value']:.1f} | {best['config']}" if best
      else "no trial complete") + f" | {study.out_dir / 'study.json'}"
      + (" | run again to go on" if data["trials_counted"] < args.trials else ""))
    return 0


def _plot(args) -> int:
    for exp in args.experiments:
        if not exp.is_dir():
            raise ConfigError(f"no experiment directory {exp}")
    if args.out is not None or len(args.experiments) == 1:
        where = args.out.parent if args.out is not None else args.experiments[0]
        check_writable(where, f"the plot's directory {where}")
    from jaxrl_lander.outputs.plotting import plot_experiments

    say(plot_experiments(args.experiments, args.out))
    return 0


def _evaluate(args) -> int:
    model = model_path(args.experiment)  # no model, or two: refused before the heavy imports
    if args.render:  # before the episodes are played
        check_writable(model.parent, f"the GIF's directory {model.parent}")
    from jaxrl_lander.training.evaluate import brief, evaluate_experiment, render_episode_gif

    summary = evaluate_experiment(args.experiment, args.episodes, args.seed, sample=args.sample)
    if args.json:
        say(json.dumps(brief(summary)))
    else:
        say(f"{args.experiment}: {summary['episodes']} {'sampled' if args.sample else 'deterministic'} episodes from"
            f" seed {summary['seeds'][0]}: mean {summary['mean']:.1f} +/- {summary['std']:.1f} (min"
            f" {summary['min']:.1f}, max {summary['max']:.1f})")
    if args.render:
        gif, episode_return = render_episode_gif(args.experiment, seed=args.seed, sample=args.sample)
        say(f"rendered one episode (return {episode_return:.1f}) to {gif}")
    return 0


COMMANDS = {"train": _train, "reproduce": _reproduce, "sweep": _sweep, "tune": _tune, "plot": _plot,
            "evaluate": _evaluate}
