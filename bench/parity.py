"""`make parity`: final evaluation returns of jaxrl_lander and Stable-Baselines3 at equal hyperparameters and steps.

Each side trains the seed experiment (50,000 steps; PPO and A2C with the seed's hyperparameters, 8 envs) for
several seeds, then plays deterministic evaluation episodes on fresh seeds. Reports per side the mean and
IQM of the per-seed evaluation returns with 95% bootstrap confidence intervals. Writes results/bench/parity.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jaxrl_lander.sweep import summarize_returns

ROOT = Path(__file__).resolve().parents[1]
SB3 = [str(ROOT / ".venv-bench" / "bin" / "python"), str(ROOT / "bench" / "sb3_train.py")]


def ours(algo: str, seed: int, episodes: int, workdir: Path) -> float:
    config = workdir / "parity.toml"
    config.write_text(f"eval_episodes = {episodes}\n")
    cmd = [sys.executable, "-m", "jaxrl_lander", "train", "--algo", algo, "--seed", str(seed),
           "--config", str(config), "--results-dir", str(workdir)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    with open(workdir / "experiments" / f"{algo}_seed{seed}" / f"{algo}_seed{seed}_results.json") as f:
        return json.load(f)["evaluation"]["mean"]


def sb3(algo: str, seed: int, episodes: int, workdir: Path) -> float:
    cmd = SB3 + ["--algo", algo, "--seed", str(seed), "--steps", "50000", "--out", str(workdir),
                 "--eval-episodes", str(episodes), "--eval-seed", str(2**31 + 1000 * seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    returns = json.loads(out.strip().splitlines()[-1])["evaluation"]
    return sum(returns) / len(returns)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per seed")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    jobs = [(side, algo, seed) for algo in ("ppo", "a2c") for seed in args.seeds for side in ("ours", "sb3")]
    with tempfile.TemporaryDirectory() as tmp:
        def one(job):
            side, algo, seed = job
            workdir = Path(tmp) / f"{side}_{algo}_{seed}"
            workdir.mkdir()
            value = (ours if side == "ours" else sb3)(algo, seed, args.episodes, workdir)
            print(f"{side} {algo} seed {seed}: {value:.1f}", file=sys.stderr, flush=True)
            return value

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            values = list(pool.map(one, jobs))
    finals = {}
    for (side, algo, _), value in zip(jobs, values):
        finals.setdefault(algo, {}).setdefault(side, []).append(value)
    report = {"seeds": args.seeds, "steps": 50_000, "evaluation_episodes": args.episodes,
              "results": {algo: {side: summarize_returns(v) for side, v in sides.items()}
                          for algo, sides in finals.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"Final deterministic evaluation return, 50,000 steps, seeds {args.seeds}, {args.episodes} episodes each;"
          " 95% bootstrap CIs over seeds\n")
    print("| algorithm | implementation | mean [95% CI] | IQM [95% CI] |\n| --- | --- | --- | --- |")
    for algo, sides in report["results"].items():
        for side, s in sides.items():
            name = "jaxrl_lander" if side == "ours" else "Stable-Baselines3"
            print(f"| {algo.upper()} | {name} | {s['mean']:.1f} [{s['mean_ci95'][0]:.1f}, {s['mean_ci95'][1]:.1f}]"
                  f" | {s['iqm']:.1f} [{s['iqm_ci95'][0]:.1f}, {s['iqm_ci95'][1]:.1f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
