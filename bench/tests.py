"""`make bench-tests`: how long each tier of the test suite takes on this machine, from a warm .venv.

Runs the fast tier (`make test`'s command) and the full suite (`make test-all`'s) RUNS times each, interleaved,
each run with a fresh compilation cache as a fresh clone would have; reports the tests counted and the min, median
and max wall time of each tier, and whether the fast tier meets its target (a median of at most 2 minutes).
Writes results/bench/tests.json.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"fast": ["-m", "not slow"], "all": []}
FAST_TARGET_SECONDS = 120.0


def run_tier(tier: str) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "auto", "-p", "no:cacheprovider", *TIERS[tier]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    if proc.returncode != 0:
        sys.exit(f"the {tier} tier failed: {summary or proc.stderr[-2000:]}")
    return {"seconds": seconds, "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {tier: [] for tier in TIERS}
    for i in range(args.runs):
        for tier in TIERS:  # interleaved: the machine's load falls on both alike
            runs[tier].append(run_tier(tier))
            print(f"run {i + 1}/{args.runs} {tier}: {runs[tier][-1]['seconds']:.0f} s", flush=True)
    report = {"cpus": os.cpu_count(), "runs": args.runs, "tiers": {}}
    for tier, results in runs.items():
        seconds = sorted(r["seconds"] for r in results)
        report["tiers"][tier] = {"counts": results[-1]["counts"], "min": seconds[0],
                                 "median": statistics.median(seconds), "max": seconds[-1]}
    fast = report["tiers"]["fast"]["median"]
    report["fast_target"] = {"seconds": FAST_TARGET_SECONDS, "met": fast <= FAST_TARGET_SECONDS}
    out = ROOT / "results" / "bench" / "tests.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{os.cpu_count()} CPUs, {args.runs} interleaved runs per tier (seconds: min / median / max)")
    for tier, row in report["tiers"].items():
        counts = ", ".join(f"{n} {word}" for word, n in row["counts"].items())
        print(f"  {tier:5s} {row['min']:6.0f} {row['median']:6.0f} {row['max']:6.0f}   {counts}")
    verdict = "met" if report["fast_target"]["met"] else "MISSED"
    print(f"fast tier median {fast:.0f} s against a target of {FAST_TARGET_SECONDS:.0f} s: {verdict}")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
