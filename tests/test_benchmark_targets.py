"""The benchmark's target bookkeeping (benchmarks/bench_floor.py): pure arithmetic on stored runs, no timing."""

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_floor", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_floor.py")
bench_floor = sys.modules.setdefault("bench_floor", importlib.util.module_from_spec(_SPEC))  # dataclasses look it up
_SPEC.loader.exec_module(bench_floor)


def _entry(ours: list[float], floor: list[float], n_mb: list[float], big_mb: list[float]) -> dict:
    median = sorted(ours)[len(ours) // 2] / sorted(floor)[len(floor) // 2]
    return {"runs_wall_cpu_s": {"ours": [[o, 2 * o] for o in ours], "floor": [[f, 2 * f] for f in floor]},
            "ours_over_floor": median, "post_over_ours": 3.0, "peak_runs_mb": {"n": n_mb, "8n": big_mb},
            "peak_8n_over_n": sorted(big_mb)[1] / sorted(n_mb)[1]}


def test_a_median_that_meets_a_target_does_not_hide_a_repeat_that_misses_it():
    # paired ratios 1.10, 1.40, 1.05: the ratio of medians (11.0 / 10.0 = 1.10) meets <= 1.15, one repeat does not
    out = bench_floor.with_targets(_entry([11.0, 14.0, 10.5], [10.0, 10.0, 10.0], [100, 100, 100], [90, 95, 120]))
    t = out["targets"]["ours_over_floor"]
    assert t["met"] is True and t["met_by_every_run"] is False
    assert t["runs"] == pytest.approx([1.10, 1.40, 1.05])
    assert t["runs_range"] == pytest.approx([1.05, 1.40])
    assert out["ours_over_floor_runs"] == t["runs"]
    peak = out["targets"]["peak_8n_over_n"]
    assert peak["runs"] == pytest.approx([0.90, 0.95, 1.20]) and peak["met_by_every_run"] is False
    assert "runs" not in out["targets"]["post_over_ours"]  # one post run per measurement: no repeats to range over


def test_targets_follow_their_direction_and_rederiving_changes_nothing():
    out = bench_floor.with_targets(_entry([9.0, 9.5, 9.2], [10.0, 10.0, 10.0], [100, 100, 100], [100, 101, 99]))
    assert all(t["met"] for t in out["targets"].values())
    assert out["targets"]["ours_over_floor"]["met_by_every_run"] is True
    assert bench_floor.with_targets({**out, "post_over_ours": 1.5})["targets"]["post_over_ours"]["met"] is False
    assert bench_floor.with_targets(out) == out


def test_an_entry_without_runs_still_gets_its_targets():
    out = bench_floor.with_targets({"ours_over_floor": 1.2})
    assert out["targets"]["ours_over_floor"] == {"target": "<= 1.15", "value": 1.2, "met": False}
    assert out["targets"]["post_over_ours"]["met"] is None  # not measured
