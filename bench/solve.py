"""`make bench-solve`: training time until the evaluation return first reaches 200, ours against SB3 + rl-zoo3.

Ours: configs/ppo_solve.toml, trained on gymnasium's env and on envpool's (evaluated on gymnasium's either way).
Stable-Baselines3: rl-zoo3's tuned PPO for LunarLander (16 envs, n_steps 1024,
batch 64, gamma 0.999, GAE lambda 0.98, 4 epochs, ent_coef 0.01). Both evaluate 10 deterministic episodes every
50,000 steps, evaluation time excluded. One run each, one after the other. Writes results/bench/solve.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxrl_lander.config import load_config
from jaxrl_lander.storage.files import ExperimentPaths, read_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    ours = {}
    for backend in ("gymnasium", "envpool"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "jaxrl_lander", "train", "--algo", "ppo", "--seed", str(args.seed),
                            "--config", str(ROOT / "configs" / "ppo_solve.toml"), "--backend", backend,
                            "--results-dir", tmp], check=True, capture_output=True, cwd=ROOT)
            config = load_config(ROOT / "configs" / "ppo_solve.toml", "ppo", {"seed": args.seed})
            results = read_json(ExperimentPaths.of(tmp, config).results)
        ours[backend] = {"solved": results["solved"], "evaluations": results["evaluations_during_training"],
                         "final_evaluation_mean": results["evaluation"]["mean"]}
    out = subprocess.run([str(ROOT / ".venv-bench" / "bin" / "python"), str(ROOT / "bench" / "sb3_solve.py"),
                          "--seed", str(args.seed)], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    sb3 = json.loads(out.strip().splitlines()[-1])
    report = {"seed": args.seed, "ours": ours, "sb3_rl_zoo": sb3}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "solve.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [(f"jaxrl_lander ppo_solve on {backend}", run["solved"]) for backend, run in ours.items()]
    for label, solved in rows + [("SB3 + rl-zoo3 PPO", sb3["solved"])]:
        if solved and solved.get("timestep"):
            print(f"{label}: first evaluation >= 200 at {solved['timestep']:,} steps after "
                  f"{solved['training_seconds']:.0f} s of training")
        else:
            print(f"{label}: did not reach 200")
    for backend, run in ours.items():
        if run["solved"]["timestep"] and sb3["solved"]:
            ratio = run["solved"]["training_seconds"] / sb3["solved"]["training_seconds"]
            print(f"time to solve, ours on {backend} / SB3: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
