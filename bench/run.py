"""`make bench`: jaxrl_lander on both env backends against Stable-Baselines3 on this machine, interleaved runs,
medians (each ratio the median of the rounds' own ratios); then the fidelity of envpool's env to gymnasium's.

Measures, for the seed experiment (50,000 steps, seed 42, a checkpoint every 1,000 steps):
training-loop env steps/s, whole-process wall time, JIT time (ours), peak RSS, and our/SB3 ratios, for PPO
and A2C on gymnasium's env and on envpool's, and on the continuous lander (ours on envpool); the raw env-step
rate of gymnasium's vector env; and the cost of our checkpoints (on vs off, PPO on envpool). Then
bench/fidelity.py, for the discrete and the continuous lander: episode returns of gymnasium's heuristic and of
random actions on both envs, with a two-sample KS test. Writes results/bench/bench.json and prints a table.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxrl_lander.config import make_config
from jaxrl_lander.storage.files import ExperimentPaths, read_json

ROOT = Path(__file__).resolve().parents[1]
OURS = [str(ROOT / ".venv" / "bin" / "python")]
SB3 = [str(ROOT / ".venv-bench" / "bin" / "python"), str(ROOT / "bench" / "sb3_train.py")]

# What the project aims at on the machine it runs on: name -> (description, bound, "min" or "max"). Ratios against
# Stable-Baselines3 at equal hyperparameters, medians of the ratios of interleaved rounds. (That gymnasium's path is
# no slower than before a change is a comparison of two code trees, not a target of this benchmark.)
TARGETS = {
    "a2c_envpool_loop_speedup_vs_sb3": ("A2C on envpool, loop steps/s vs SB3", 6.0, "min"),
    "a2c_envpool_wall_speedup_vs_sb3": ("A2C on envpool, whole process vs SB3", 3.0, "min"),
    "ppo_envpool_loop_speedup_vs_sb3": ("PPO on envpool, loop steps/s vs SB3", 10.0, "min"),
    "ppo_envpool_wall_speedup_vs_sb3": ("PPO on envpool, whole process vs SB3", 5.0, "min"),
    "checkpoint_share_of_loop": ("checkpoints' share of the PPO envpool loop", 0.05, "max"),
}


def verdicts(summary: dict) -> dict[str, dict]:
    """Each target with its measured value and whether it is met."""
    out = {}
    for name, (what, bound, kind) in TARGETS.items():
        value = summary[name]
        out[name] = {"description": what, "measured": value, "target": bound, "kind": kind,
                     "met": value >= bound if kind == "min" else value <= bound}
    return out


def targets_table(checked: dict[str, dict]) -> str:
    lines = ["", "| target | measured | aim | |", "| --- | --- | --- | --- |"]
    for r in checked.values():
        fmt = (lambda v: f"{v:.1%}") if r["kind"] == "max" else (lambda v: f"{v:.2f}x")
        aim = f"{'<=' if r['kind'] == 'max' else '>='} {fmt(r['target'])}"
        lines.append(f"| {r['description']} | {fmt(r['measured'])} | {aim} | {'met' if r['met'] else 'MISSED'} |")
    return "\n".join(lines)


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


def ours(algo: str, workdir: Path, checkpoint_interval: int | None = None, cache: str | None = None,
         backend: str = "gymnasium", env_id: str | None = None) -> dict:
    cmd = OURS + ["-m", "jaxrl_lander", "train", "--algo", algo, "--seed", "42", "--results-dir", str(workdir),
                  "--backend", backend]
    keys = {"checkpoint_interval": checkpoint_interval, "env_id": env_id}
    keys = {name: value for name, value in keys.items() if value is not None}
    if keys:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "bench.toml"
        config.write_text("".join(f"{name} = {json.dumps(value)}\n" for name, value in keys.items()))
        cmd += ["--config", str(config)]
    env = {"JAXRL_LANDER_JAX_CACHE": cache} if cache is not None else None
    outcome = run(cmd, env)
    results = read_json(ExperimentPaths.of(workdir, make_config(algo, {"seed": 42, **keys})).results)
    return {
        "wall_seconds": outcome["wall_seconds"],
        "peak_rss_mb": outcome["peak_rss_mb"],
        "loop_seconds": results["training_time_seconds"],
        "steps_per_second": results["steps_per_second"],
        "jit_seconds": results["compile_seconds"],
        "checkpoints": len(results["artifacts"]["checkpoints"]),
        "evaluation_mean": results["evaluation"]["mean"],
    }


def sb3(algo: str, workdir: Path, env_id: str = "LunarLander-v3") -> dict:
    outcome = run(SB3 + ["--algo", algo, "--steps", "50000", "--seed", "42", "--out", str(workdir),
                         "--env-id", env_id])
    report = json.loads(outcome["stdout"].strip().splitlines()[-1])
    return {"wall_seconds": outcome["wall_seconds"], "peak_rss_mb": outcome["peak_rss_mb"],
            "loop_seconds": report["learn_seconds"], "steps_per_second": report["steps_per_second"],
            "checkpoints": report["checkpoints"]}


def raw_env() -> dict:
    outcome = run(OURS + [str(ROOT / "bench" / "raw_env.py"), "--num-envs", "8", "--steps", "50000"])
    return json.loads(outcome["stdout"].strip().splitlines()[-1])


CONTINUOUS = "LunarLanderContinuous-v3"
FIDELITY_ENVS = ("LunarLander-v3", CONTINUOUS)  # envpool's ports of them that training plays


def fidelity(episodes: int, env_id: str) -> dict:
    outcome = run(OURS + [str(ROOT / "bench" / "fidelity.py"), "--episodes", str(episodes), "--env-id", env_id])
    return json.loads(outcome["stdout"].strip().splitlines()[-1])


def paired_ratio(samples: dict[str, list[dict]], a: str, b: str, key: str) -> float:
    """The median over rounds of case a's `key` over case b's, each round's pair taken together."""
    return statistics.median(x[key] / y[key] for x, y in zip(samples[a], samples[b], strict=True))


def medians(samples: list[dict]) -> dict:
    keys = [k for k, v in samples[0].items() if isinstance(v, (int, float)) and v is not None]
    return {k: statistics.median(s[k] for s in samples) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (interleaved)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--fidelity-episodes", type=int, default=1000, help="episodes per policy and env")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The first run on a machine pays JIT compilation; later runs reuse the persistent cache.
        cold_cache = str(tmp / "cold_cache")
        first_run = {f"{algo}_{backend}": ours(algo, tmp / f"first_{algo}_{backend}", cache=cold_cache,
                                               backend=backend)
                     for algo in ("ppo", "a2c") for backend in ("gymnasium", "envpool")}
        first_run.update({f"{algo}_continuous_envpool": ours(algo, tmp / f"first_{algo}_continuous", cache=cold_cache,
                                                             backend="envpool", env_id=CONTINUOUS)
                          for algo in ("ppo", "a2c")})
        cache = cold_cache  # warm from here on
        cases = {
            "ours_ppo": lambda d: ours("ppo", d, cache=cache),
            "ours_ppo_envpool": lambda d: ours("ppo", d, cache=cache, backend="envpool"),
            "sb3_ppo": lambda d: sb3("ppo", d),
            "ours_ppo_envpool_no_checkpoints": lambda d: ours("ppo", d, checkpoint_interval=10**9, cache=cache,
                                                              backend="envpool"),
            "ours_a2c": lambda d: ours("a2c", d, cache=cache),
            "ours_a2c_envpool": lambda d: ours("a2c", d, cache=cache, backend="envpool"),
            "sb3_a2c": lambda d: sb3("a2c", d),
            "raw_env": lambda d: raw_env(),
        }
        for algo in ("ppo", "a2c"):  # the continuous lander: envpool's compiled path, the fast one, against SB3
            cases[f"ours_{algo}_continuous_envpool"] = functools.partial(
                ours, algo, cache=cache, backend="envpool", env_id=CONTINUOUS)
            cases[f"sb3_{algo}_continuous"] = functools.partial(sb3, algo, env_id=CONTINUOUS)
        samples: dict[str, list[dict]] = {name: [] for name in cases}
        for i in range(args.runs):
            for name, case in cases.items():  # A B C ... A B C: drifts in machine load hit every case alike
                workdir = tmp / f"{name}_{i}"
                workdir.mkdir()
                samples[name].append(case(workdir))
                print(f"run {i + 1}/{args.runs} {name}: {json.dumps(samples[name][-1])}", file=sys.stderr, flush=True)

    m = {name: medians(s) for name, s in samples.items()}
    # Ratios are medians of each round's own ratio: a round runs every case in turn, so a slow spell of the machine
    # falls on both sides of a pair, and drops out of its ratio more than out of a ratio of separate medians.
    ratio = functools.partial(paired_ratio, samples)
    summary = {"ppo_fraction_of_raw_env": ratio("ours_ppo", "raw_env", "steps_per_second"),
               "checkpoint_overhead": 1 - ratio("ours_ppo_envpool_no_checkpoints", "ours_ppo_envpool", "wall_seconds"),
               "checkpoint_share_of_loop": 1 - ratio("ours_ppo_envpool_no_checkpoints", "ours_ppo_envpool",
                                                     "loop_seconds")}
    for algo in ("ppo", "a2c"):
        for ours_case, label, theirs in ((f"ours_{algo}", algo, f"sb3_{algo}"),
                                         (f"ours_{algo}_envpool", f"{algo}_envpool", f"sb3_{algo}"),
                                         (f"ours_{algo}_continuous_envpool", f"{algo}_continuous_envpool",
                                          f"sb3_{algo}_continuous")):
            summary[f"{label}_loop_speedup_vs_sb3"] = ratio(ours_case, theirs, "steps_per_second")
            summary[f"{label}_wall_speedup_vs_sb3"] = ratio(theirs, ours_case, "wall_seconds")
            summary[f"{label}_rss_ratio_vs_sb3"] = ratio(ours_case, theirs, "peak_rss_mb")
    targets = verdicts(summary)
    print("fidelity of envpool's env (bench/fidelity.py) ...", file=sys.stderr, flush=True)
    env_fidelity = {env_id: fidelity(args.fidelity_episodes, env_id) for env_id in FIDELITY_ENVS}
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "runs": args.runs,
        "first_run_cold_cache": first_run,
        "medians": m,
        "summary": summary,
        "targets_met": targets,
        "fidelity": env_fidelity,
        "samples": samples,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(m, summary, first_run, args.runs))
    print(targets_table(targets))
    for env_id, report in env_fidelity.items():
        print(fidelity_table(report, env_id))
    print(f"\nfull report: {args.out / 'bench.json'}")
    return 0


def table(m: dict, summary: dict, first_run: dict, runs: int) -> str:
    def row(name, label):
        r = m[name]
        jit = f"{r['jit_seconds']:.1f}" if "jit_seconds" in r else "-"
        return (f"| {label} | {r['steps_per_second']:,.0f} | {r['loop_seconds']:.1f} | {r['wall_seconds']:.1f} | "
                f"{jit} | {r['peak_rss_mb']:.0f} |")

    def ratios(label, key):
        return (f"{label}: loop {summary[f'{key}_loop_speedup_vs_sb3']:.2f}x SB3's steps/s, whole process "
                f"{summary[f'{key}_wall_speedup_vs_sb3']:.2f}x faster, RSS {summary[f'{key}_rss_ratio_vs_sb3']:.2f}x")

    lines = [
        f"Medians of {runs} interleaved runs, 50,000 steps, seed 42, 8 envs, a checkpoint every 1,000 steps.",
        "",
        "| run | loop steps/s | loop s | whole process s | JIT s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- |",
        row("ours_ppo", "jaxrl_lander PPO, gymnasium"),
        row("ours_ppo_envpool", "jaxrl_lander PPO, envpool"),
        row("ours_ppo_envpool_no_checkpoints", "jaxrl_lander PPO, envpool, checkpoints off"),
        row("sb3_ppo", "Stable-Baselines3 PPO"),
        row("ours_a2c", "jaxrl_lander A2C, gymnasium"),
        row("ours_a2c_envpool", "jaxrl_lander A2C, envpool"),
        row("sb3_a2c", "Stable-Baselines3 A2C"),
        row("ours_ppo_continuous_envpool", "jaxrl_lander PPO, continuous, envpool"),
        row("sb3_ppo_continuous", "Stable-Baselines3 PPO, continuous"),
        row("ours_a2c_continuous_envpool", "jaxrl_lander A2C, continuous, envpool"),
        row("sb3_a2c_continuous", "Stable-Baselines3 A2C, continuous"),
        "",
        f"raw env.step of gymnasium's vector env, random actions: {m['raw_env']['steps_per_second']:,.0f} steps/s;"
        f" PPO on gymnasium reaches {summary['ppo_fraction_of_raw_env']:.0%} of it",
        ratios("PPO, gymnasium", "ppo"), ratios("PPO, envpool", "ppo_envpool"),
        ratios("A2C, gymnasium", "a2c"), ratios("A2C, envpool", "a2c_envpool"),
        ratios("PPO, continuous, envpool", "ppo_continuous_envpool"),
        ratios("A2C, continuous, envpool", "a2c_continuous_envpool"),
        f"checkpoints (PPO, envpool): {summary['checkpoint_share_of_loop']:.1%} of the loop, "
        f"{summary['checkpoint_overhead']:.1%} of the whole process's wall time",
        "first run on a cold compilation cache, whole process (JIT): " + ", ".join(
            f"{name.replace('_', ' ')} {r['wall_seconds']:.1f} s ({r['jit_seconds']:.1f} s)"
            for name, r in first_run.items()),
    ]
    return "\n".join(lines)


def fidelity_table(report: dict, env_id: str) -> str:
    lines = [f"\nenvpool's {env_id} against gymnasium's, {report['episodes']} episodes per policy and env:", "",
             "| policy | gymnasium return | envpool return | gymnasium length | envpool length | KS D | KS p |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for policy in ("heuristic", "random"):
        r = report[policy]
        g, e = r["gymnasium"], r["envpool"]
        lines.append(f"| {policy} | {g['mean']:.1f} +/- {g['std']:.1f} | {e['mean']:.1f} +/- {e['std']:.1f} | "
                     f"{g['mean_length']:.0f} | {e['mean_length']:.0f} | {r['ks_statistic']:.3f} | "
                     f"{r['ks_p_value']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
