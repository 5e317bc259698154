"""A sweep's results as a markdown table row, read from its summary JSON (so the docs' figures can be regenerated).

    .venv/bin/python bench/report.py results/sweeps/ppo_solve [results/sweeps/a2c_solve ...]

Columns: sweep, seeds, final evaluations, how many reach the solve threshold, mean and IQM with 95% bootstrap
CIs over seeds, and the range of first evaluations at or above the threshold (env steps, training seconds).
"""

import argparse
import sys
from pathlib import Path

from jaxrl_lander.storage.files import read_json


def row(sweep: Path) -> str:
    summary = read_json(sweep / "summary.json")
    final = summary["final_evaluation"]
    seeds = summary["seeds"]
    seed_text = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else " ".join(map(str, seeds))
    solved = [(t, s) for t, s in zip(summary["first_solved_timestep"], summary["first_solved_training_seconds"]) if t]
    first = "-" if not solved else (f"{min(t for t, _ in solved):,}-{max(t for t, _ in solved):,} steps, "
                                    f"{min(s for _, s in solved):.0f}-{max(s for _, s in solved):.0f} s")
    return (f"| {sweep.name} | {seed_text} | {', '.join(f'{v:.1f}' for v in final['values'])} "
            f"| {summary['seeds_solved_at_end']}/{len(seeds)} | {final['mean']:.1f} [{final['mean_ci95'][0]:.1f}, "
            f"{final['mean_ci95'][1]:.1f}] | {final['iqm']:.1f} [{final['iqm_ci95'][0]:.1f}, {final['iqm_ci95'][1]:.1f}]"
            f" | {first} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+", help="sweep directories (each holds summary.json)")
    args = parser.parse_args()
    print(f"| sweep | seeds | final evaluations | at {read_json(args.sweeps[0] / 'summary.json')['solve_threshold']:g}"
          " | mean [95% CI] | IQM [95% CI] | first evaluation at the threshold |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for sweep in args.sweeps:
        print(row(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
