"""`make bench`: jaxrl_lander against Stable-Baselines3 on this machine, interleaved runs, medians.

Measures, for the seed experiment (50,000 steps, seed 42, a checkpoint every 1,000 steps):
training-loop env steps/s, whole-process wall time, JIT time (ours), peak RSS, and our/SB3 ratios, for PPO
and A2C; the raw env-step rate of the same vector env; and the cost of our checkpoints (on vs off).
Writes results/bench/bench.json and prints a markdown table.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxrl_lander.files import ExperimentPaths, read_json

ROOT = Path(__file__).resolve().parents[1]
OURS = [str(ROOT / ".venv" / "bin" / "python")]
SB3 = [str(ROOT / ".venv-bench" / "bin" / "python"), str(ROOT / "bench" / "sb3_train.py")]

TARGETS = {
    "ppo_loop_speedup_vs_sb3": 10.0,
    "ppo_fraction_of_raw_env": 0.60,
    "ppo_wall_speedup_vs_sb3": 4.0,
    "checkpoint_overhead_max": 0.10,
}


def run(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command to completion: its wall time, its own peak RSS (from wait4) and its stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
        return {"wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out.read()}


def ours(algo: str, workdir: Path, checkpoint_interval: int | None = None, cache: str | None = None) -> dict:
    cmd = OURS + ["-m", "jaxrl_lander", "train", "--algo", algo, "--seed", "42", "--results-dir", str(workdir)]
    if checkpoint_interval is not None:
        config = workdir / "bench.toml"
        config.write_text(f"checkpoint_interval = {checkpoint_interval}\n")
        cmd += ["--config", str(config)]
    env = {"JAXRL_LANDER_JAX_CACHE": cache} if cache is not None else None
    outcome = run(cmd, env)
    results = read_json(ExperimentPaths.of(workdir, algo, 42).results)
    return {
        "wall_seconds": outcome["wall_seconds"],
        "peak_rss_mb": outcome["peak_rss_mb"],
        "loop_seconds": results["training_time_seconds"],
        "steps_per_second": results["steps_per_second"],
        "jit_seconds": results["compile_seconds"],
        "checkpoints": len(results["artifacts"]["checkpoints"]),
        "evaluation_mean": results["evaluation"]["mean"],
    }


def sb3(algo: str, workdir: Path) -> dict:
    outcome = run(SB3 + ["--algo", algo, "--steps", "50000", "--seed", "42", "--out", str(workdir)])
    report = json.loads(outcome["stdout"].strip().splitlines()[-1])
    return {"wall_seconds": outcome["wall_seconds"], "peak_rss_mb": outcome["peak_rss_mb"],
            "loop_seconds": report["learn_seconds"], "steps_per_second": report["steps_per_second"],
            "checkpoints": report["checkpoints"]}


def raw_env() -> dict:
    outcome = run(OURS + [str(ROOT / "bench" / "raw_env.py"), "--num-envs", "8", "--steps", "50000"])
    return json.loads(outcome["stdout"].strip().splitlines()[-1])


def medians(samples: list[dict]) -> dict:
    keys = [k for k, v in samples[0].items() if isinstance(v, (int, float)) and v is not None]
    return {k: statistics.median(s[k] for s in samples) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (interleaved)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The first run on a machine pays JIT compilation; later runs reuse the persistent cache.
        cold_cache = str(tmp / "cold_cache")
        first_run = {algo: ours(algo, tmp / f"first_{algo}", cache=cold_cache) for algo in ("ppo", "a2c")}
        cache = cold_cache  # warm from here on
        cases = {
            "ours_ppo": lambda d: ours("ppo", d, cache=cache),
            "sb3_ppo": lambda d: sb3("ppo", d),
            "ours_ppo_no_checkpoints": lambda d: ours("ppo", d, checkpoint_interval=10**9, cache=cache),
            "ours_a2c": lambda d: ours("a2c", d, cache=cache),
            "sb3_a2c": lambda d: sb3("a2c", d),
            "raw_env": lambda d: raw_env(),
        }
        samples: dict[str, list[dict]] = {name: [] for name in cases}
        for i in range(args.runs):
            for name, case in cases.items():  # A B C ... A B C: drifts in machine load hit every case alike
                workdir = tmp / f"{name}_{i}"
                workdir.mkdir()
                samples[name].append(case(workdir))
                print(f"run {i + 1}/{args.runs} {name}: {json.dumps(samples[name][-1])}", file=sys.stderr, flush=True)

    m = {name: medians(s) for name, s in samples.items()}
    summary = {
        "ppo_loop_speedup_vs_sb3": m["ours_ppo"]["steps_per_second"] / m["sb3_ppo"]["steps_per_second"],
        "ppo_wall_speedup_vs_sb3": m["sb3_ppo"]["wall_seconds"] / m["ours_ppo"]["wall_seconds"],
        "ppo_fraction_of_raw_env": m["ours_ppo"]["steps_per_second"] / m["raw_env"]["steps_per_second"],
        "checkpoint_overhead": 1 - m["ours_ppo_no_checkpoints"]["wall_seconds"] / m["ours_ppo"]["wall_seconds"],
        "ppo_rss_ratio_vs_sb3": m["ours_ppo"]["peak_rss_mb"] / m["sb3_ppo"]["peak_rss_mb"],
        "a2c_loop_speedup_vs_sb3": m["ours_a2c"]["steps_per_second"] / m["sb3_a2c"]["steps_per_second"],
        "a2c_wall_speedup_vs_sb3": m["sb3_a2c"]["wall_seconds"] / m["ours_a2c"]["wall_seconds"],
        "a2c_rss_ratio_vs_sb3": m["ours_a2c"]["peak_rss_mb"] / m["sb3_a2c"]["peak_rss_mb"],
    }
    targets = {
        "ppo_loop_speedup_vs_sb3": summary["ppo_loop_speedup_vs_sb3"] >= TARGETS["ppo_loop_speedup_vs_sb3"],
        "ppo_fraction_of_raw_env": summary["ppo_fraction_of_raw_env"] >= TARGETS["ppo_fraction_of_raw_env"],
        "ppo_wall_speedup_vs_sb3": summary["ppo_wall_speedup_vs_sb3"] >= TARGETS["ppo_wall_speedup_vs_sb3"],
        "checkpoint_overhead": summary["checkpoint_overhead"] <= TARGETS["checkpoint_overhead_max"],
        "ppo_rss_not_above_sb3": summary["ppo_rss_ratio_vs_sb3"] <= 1.0,
    }
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "runs": args.runs,
        "first_run_cold_cache": first_run,
        "medians": m,
        "summary": summary,
        "targets_met": targets,
        "samples": samples,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(m, summary, first_run, args.runs))
    print(f"\nfull report: {args.out / 'bench.json'}")
    return 0


def table(m: dict, summary: dict, first_run: dict, runs: int) -> str:
    def row(name, label):
        r = m[name]
        jit = f"{r['jit_seconds']:.1f}" if "jit_seconds" in r else "-"
        return (f"| {label} | {r['steps_per_second']:,.0f} | {r['loop_seconds']:.1f} | {r['wall_seconds']:.1f} | "
                f"{jit} | {r['peak_rss_mb']:.0f} |")

    lines = [
        f"Medians of {runs} interleaved runs, 50,000 steps, seed 42, 8 envs, a checkpoint every 1,000 steps.",
        "",
        "| run | loop steps/s | loop s | whole process s | JIT s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- |",
        row("ours_ppo", "jaxrl_lander PPO"),
        row("sb3_ppo", "Stable-Baselines3 PPO"),
        row("ours_ppo_no_checkpoints", "jaxrl_lander PPO, checkpoints off"),
        row("ours_a2c", "jaxrl_lander A2C"),
        row("sb3_a2c", "Stable-Baselines3 A2C"),
        "",
        f"raw env.step of the same vector env, random actions: {m['raw_env']['steps_per_second']:,.0f} steps/s",
        f"PPO: loop {summary['ppo_loop_speedup_vs_sb3']:.2f}x SB3, whole process "
        f"{summary['ppo_wall_speedup_vs_sb3']:.2f}x, {summary['ppo_fraction_of_raw_env']:.0%} of the raw env rate, "
        f"checkpoint overhead {summary['checkpoint_overhead']:.1%} of wall time, RSS "
        f"{summary['ppo_rss_ratio_vs_sb3']:.2f}x SB3's",
        f"A2C: loop {summary['a2c_loop_speedup_vs_sb3']:.2f}x SB3, whole process "
        f"{summary['a2c_wall_speedup_vs_sb3']:.2f}x, RSS {summary['a2c_rss_ratio_vs_sb3']:.2f}x SB3's",
        f"first run on a cold compilation cache: PPO {first_run['ppo']['wall_seconds']:.1f} s whole process "
        f"({first_run['ppo']['jit_seconds']:.1f} s JIT), A2C {first_run['a2c']['wall_seconds']:.1f} s "
        f"({first_run['a2c']['jit_seconds']:.1f} s JIT)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
