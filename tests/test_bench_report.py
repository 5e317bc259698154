"""`make bench`'s arithmetic: ratios taken round by round, and each target's verdict (the runs themselves need SB3's
own venv and minutes; this checks what turns their samples into the report)."""

import pytest
from helpers import bench_module


@pytest.fixture(scope="module")
def bench():
    return bench_module("run")


def test_a_ratio_is_the_median_of_each_rounds_own_ratio(bench):
    # Round 2 was slow for both cases: its pair still says "half as long", as the other rounds do. A ratio of the
    # separate medians (1.5 / 2.0) would say 0.75.
    samples = {"ours": [{"s": 1.0}, {"s": 3.0}, {"s": 1.5}], "theirs": [{"s": 2.0}, {"s": 6.0}, {"s": 3.0}]}
    assert bench.paired_ratio(samples, "ours", "theirs", "s") == 0.5
    with pytest.raises(ValueError):  # rounds that do not pair up are an error, not a shorter zip
        bench.paired_ratio({"ours": [{"s": 1.0}], "theirs": []}, "ours", "theirs", "s")


def test_each_target_is_met_or_missed_on_its_own_side_of_its_bound(bench):
    summary = dict.fromkeys(bench.TARGETS, 0.0)
    summary.update(ppo_envpool_loop_speedup_vs_sb3=10.0, checkpoint_share_of_loop=0.051)
    checked = bench.verdicts(summary)
    assert checked["ppo_envpool_loop_speedup_vs_sb3"]["met"] is True  # a bound is met exactly at it
    assert checked["checkpoint_share_of_loop"]["met"] is False  # a share just above its 5% bound
    assert checked["a2c_envpool_loop_speedup_vs_sb3"]["met"] is False
    assert "| checkpoints' share of the PPO envpool loop | 5.1% | <= 5.0% | MISSED |" in bench.targets_table(checked)


def test_the_table_has_a_row_and_ratios_for_every_case_the_continuous_lander_included(bench):
    run = {"steps_per_second": 1000.0, "loop_seconds": 50.0, "wall_seconds": 60.0, "jit_seconds": 2.0,
           "peak_rss_mb": 500.0}
    cases = ["ours_ppo", "ours_ppo_envpool", "ours_ppo_envpool_no_checkpoints", "sb3_ppo", "ours_a2c",
             "ours_a2c_envpool", "sb3_a2c", "ours_ppo_continuous_envpool", "sb3_ppo_continuous",
             "ours_a2c_continuous_envpool", "sb3_a2c_continuous"]
    medians = {name: dict(run) for name in cases} | {"raw_env": {"steps_per_second": 9000.0}}
    medians["ours_ppo_continuous_envpool"]["steps_per_second"] = 4000.0
    summary = {f"{label}_{kind}": 2.0 for label in ("ppo", "ppo_envpool", "a2c", "a2c_envpool",
                                                    "ppo_continuous_envpool", "a2c_continuous_envpool")
               for kind in ("loop_speedup_vs_sb3", "wall_speedup_vs_sb3", "rss_ratio_vs_sb3")}
    summary.update(ppo_fraction_of_raw_env=0.5, checkpoint_share_of_loop=0.1, checkpoint_overhead=0.05)
    text = bench.table(medians, summary, {"ppo_gymnasium": {"wall_seconds": 9.0, "jit_seconds": 3.0}}, 3)
    assert "| jaxrl_lander PPO, continuous, envpool | 4,000 | 50.0 | 60.0 | 2.0 | 500 |" in text
    assert "| Stable-Baselines3 A2C, continuous | 1,000 |" in text
    assert "A2C, continuous, envpool: loop 2.00x SB3's steps/s" in text
