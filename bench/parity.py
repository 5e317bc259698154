"""`make parity`: final evaluation returns of jaxrl_lander and Stable-Baselines3 at equal hyperparameters and steps.

By default each side trains the seed experiment (50,000 steps; PPO and A2C with the seed's hyperparameters,
8 envs); with --config, one algorithm with that file's hyperparameters and steps on both sides. Every seed is
followed by deterministic evaluation episodes on fresh seeds. Reports per side the mean and IQM of the
per-seed evaluation returns with 95% bootstrap confidence intervals. Writes results/bench/parity.json
(parity_<config name>.json with --config).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jaxrl_lander.config import ConfigError, RunConfig, load_config, read_toml
from jaxrl_lander.storage.files import ExperimentPaths, read_json
from jaxrl_lander.studies.sweep import summarize_returns

ROOT = Path(__file__).resolve().parents[1]
SB3 = [str(ROOT / ".venv-bench" / "bin" / "python"), str(ROOT / "bench" / "sb3_train.py")]


def sb3_hyperparameters(config: RunConfig) -> dict:
    """The keyword arguments of SB3's PPO or A2C that train as `config` does; ConfigError for what SB3 lacks."""
    if config.reward_scale != 1.0:
        raise ConfigError("reward_scale has no Stable-Baselines3 counterpart; parity needs reward_scale = 1")
    kwargs = dict(learning_rate=config.learning_rate, linear_lr=config.anneal_lr, n_steps=config.n_steps,
                  gamma=config.gamma, gae_lambda=config.gae_lambda, ent_coef=config.ent_coef, vf_coef=config.vf_coef,
                  max_grad_norm=config.max_grad_norm, normalize_advantage=config.normalize_advantage,
                  policy_kwargs={"net_arch": [config.hidden_size] * 2})
    if config.log_std_init != 0.0:  # SB3's default start is 0 too
        kwargs["policy_kwargs"]["log_std_init"] = config.log_std_init
    if config.normalize_observations or config.normalize_rewards:  # VecNormalize, clipping both at 10 as ours
        kwargs.update(normalize={"norm_obs": config.normalize_observations,
                                 "norm_reward": config.normalize_rewards})
    if config.algo == "a2c" and config.optimizer == "rmsprop":
        if config.rms_decay != 0.99:
            raise ConfigError("Stable-Baselines3's A2C fixes RMSprop's decay at 0.99; parity needs rms_decay = 0.99")
        kwargs.update(rms_prop_eps=config.rms_eps)  # SB3's A2C then builds its own RMSprop
        return kwargs
    if config.algo == "ppo":
        kwargs.update(batch_size=config.batch_size, n_epochs=config.n_epochs, clip_range=config.clip_range)
    else:
        kwargs.update(use_rms_prop=False)
    kwargs["policy_kwargs"]["optimizer_kwargs"] = {"eps": config.adam_eps}
    return kwargs


def ours(algo: str, seed: int, episodes: int, workdir: Path, config_path: Path | None) -> float:
    config = workdir / "parity.toml"
    values = read_toml(config_path) if config_path else {}
    values["eval_episodes"] = episodes
    config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    cmd = [sys.executable, "-m", "jaxrl_lander", "train", "--algo", algo, "--seed", str(seed), "--quiet",
           "--config", str(config), "--results-dir", str(workdir)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    paths = ExperimentPaths.of(workdir, load_config(config, algo, {"seed": seed}))
    return read_json(paths.results)["evaluation"]["mean"]


def sb3(algo: str, seed: int, episodes: int, workdir: Path, config_path: Path | None) -> float:
    cmd = SB3 + ["--algo", algo, "--seed", str(seed), "--out", str(workdir), "--eval-episodes", str(episodes),
                 "--eval-seed", str(2**31 + 1000 * seed)]
    if config_path:
        config = load_config(config_path, algo)
        cmd += ["--steps", str(config.total_timesteps), "--num-envs", str(config.num_envs), "--checkpoint-interval",
                "0", "--hyperparameters", json.dumps(sb3_hyperparameters(config)), "--env-id", config.env_id,
                "--env-options", json.dumps(config.env_options())]
    else:
        cmd += ["--steps", "50000"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    returns = json.loads(out.strip().splitlines()[-1])["evaluation"]
    return sum(returns) / len(returns)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--config", type=Path, default=None,
                        help="a jaxrl_lander TOML config (with its algo key): both sides train it instead")
    parser.add_argument("--episodes", type=int, default=None,
                        help="evaluation episodes per seed (default: 20, or the config's eval_episodes)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    algos, steps, episodes, report_name = ("ppo", "a2c"), 50_000, args.episodes or 20, "parity.json"
    if args.config:
        try:
            config = load_config(args.config)
            algo = config.algo
            sb3_hyperparameters(config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        algos, steps, report_name = (algo,), config.total_timesteps, f"parity_{args.config.stem}.json"
        episodes = args.episodes or config.eval_episodes
    jobs = [(side, algo, seed) for algo in algos for seed in args.seeds for side in ("ours", "sb3")]
    with tempfile.TemporaryDirectory() as tmp:
        def one(job):
            side, algo, seed = job
            workdir = Path(tmp) / f"{side}_{algo}_{seed}"
            workdir.mkdir()
            value = (ours if side == "ours" else sb3)(algo, seed, episodes, workdir, args.config)
            print(f"{side} {algo} seed {seed}: {value:.1f}", file=sys.stderr, flush=True)
            return value

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            values = list(pool.map(one, jobs))
    finals = {}
    for (side, algo, _), value in zip(jobs, values):
        finals.setdefault(algo, {}).setdefault(side, []).append(value)
    report = {"config": str(args.config) if args.config else "the seed experiment", "seeds": args.seeds,
              "steps": steps, "evaluation_episodes": episodes,
              "results": {algo: {side: summarize_returns(v) for side, v in sides.items()}
                          for algo, sides in finals.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / report_name).write_text(json.dumps(report, indent=2) + "\n")
    print(f"Final deterministic evaluation return, {report['config']}, {steps:,} steps, seeds {args.seeds},"
          f" {episodes} episodes each; 95% bootstrap CIs over seeds\n")
    print("| algorithm | implementation | mean [95% CI] | IQM [95% CI] |\n| --- | --- | --- | --- |")
    for algo, sides in report["results"].items():
        for side, s in sides.items():
            name = "jaxrl_lander" if side == "ours" else "Stable-Baselines3"
            print(f"| {algo.upper()} | {name} | {s['mean']:.1f} [{s['mean_ci95'][0]:.1f}, {s['mean_ci95'][1]:.1f}]"
                  f" | {s['iqm']:.1f} [{s['iqm_ci95'][0]:.1f}, {s['iqm_ci95'][1]:.1f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
