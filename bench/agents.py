"""`make bench-agents`: a sweep trained as vectorised agents of one process against the same sweep as one
process per seed, on this machine, one after the other. Wall time of the whole `sweep` command each (start-up,
compiles, evaluations and the summary included).

- solve: configs/ppo_solve.toml, 10 seeds (0-9): processes on gymnasium's env (today's `make sweep`) against
  vectorised agents on envpool's; the seeds at 200 or more on the final evaluation (100 episodes on gymnasium).
- seed: the seed experiment (configs/ppo.toml, 50,000 steps), 3 learning rates x 5 seeds: 15 processes against
  15 agents.
Writes results/bench/agents.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "solve": ["--config", str(ROOT / "configs" / "ppo_solve.toml"), "--seeds", *map(str, range(10))],
    "seed": ["--config", str(ROOT / "configs" / "ppo.toml"), "--seeds", *map(str, range(5)),
             "--set", "learning_rate=[1e-4,3e-4,1e-3]"],
}


def sweep(args: list[str], vectorized: bool) -> dict:
    """Run one sweep in a fresh results directory: its wall seconds and each variant's summary."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--vectorized"] if vectorized else []
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jaxrl_lander", "sweep", "--algo", "ppo", *args, *extra,
                        "--name", "bench", "--results-dir", tmp], check=True, capture_output=True, cwd=ROOT)
        wall = time.perf_counter() - start
        out = Path(tmp) / "sweeps" / "bench"
        summary = json.loads((out / "summary.json").read_text())
    variants = summary.get("variants", {"": summary})
    return {"wall_seconds": wall, "variants": {
        name: {"final_evaluation_mean": s["final_evaluation"]["mean"], "values": s["final_evaluation"]["values"],
               "seeds_solved_at_end": s["seeds_solved_at_end"],
               "training_time_seconds": s["training_time_seconds"]} for name, s in variants.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    report = {"cpus": os.cpu_count(), "cases": {}}
    for case in args.cases:
        sweep_args = CASES[case]
        processes = sweep(sweep_args, vectorized=False)
        agents = sweep(sweep_args, vectorized=True)
        ratio = processes["wall_seconds"] / agents["wall_seconds"]
        report["cases"][case] = {"processes": processes, "vectorized": agents, "speedup": ratio}
        print(f"{case}: processes {processes['wall_seconds']:.0f} s, vectorised agents {agents['wall_seconds']:.0f} s"
              f" ({ratio:.2f}x)")
        for label, run in (("processes", processes), ("vectorised", agents)):
            for name, variant in run["variants"].items():
                n = len(variant["values"])
                print(f"  {label} {name or 'all seeds'}: final evaluation mean {variant['final_evaluation_mean']:.1f},"
                      f" {variant['seeds_solved_at_end']}/{n} seeds >= 200")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agents.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
