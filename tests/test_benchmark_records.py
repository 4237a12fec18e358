"""What the benchmarks record beside their timings: the targets' bookkeeping (benchmarks/bench_floor.py, pure
arithmetic on stored runs), the code measured (benchmarks/machine.py) and how the GPU script stops a step at its
deadline (benchmarks/gpu/run_gpu.py). No timing here."""

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench_floor = _load("bench_floor", BENCHMARKS / "bench_floor.py")
run_gpu = _load("run_gpu", BENCHMARKS / "gpu" / "run_gpu.py")


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


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
def test_the_code_state_names_the_commit_and_what_differs_from_it(tmp_path):
    repo = tmp_path / "checkout"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "saetransfer").mkdir()
    shutil.copy(BENCHMARKS / "machine.py", repo / "benchmarks" / "machine.py")
    for f in ("saetransfer/engine.py", "benchmarks/results/floor.json", "README.md"):
        (repo / f).write_text("v1\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    machine = _load("machine_under_test", repo / "benchmarks" / "machine.py")
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert machine.code_state() == {"commit": head, "modified": []}
    for f in ("saetransfer/engine.py", "benchmarks/results/floor.json", "README.md"):
        (repo / f).write_text("v2\n")
    (repo / "saetransfer" / "new.py").write_text("")
    # the engine's files count, results files and the rest of the tree do not
    assert machine.code_state() == {"commit": head, "modified": ["saetransfer/engine.py", "saetransfer/new.py"]}


def test_a_copied_tree_records_only_the_commit_its_sender_names(tmp_path, monkeypatch):
    copy = tmp_path / "copy" / "benchmarks"  # as on a lent machine: the files without their repository
    copy.mkdir(parents=True)
    shutil.copy(BENCHMARKS / "machine.py", copy / "machine.py")
    if shutil.which("git"):
        _git(tmp_path, "init", "-q")  # even inside some other repository, with a commit of its own
        _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--allow-empty", "-qm", "outer")
    machine = _load("machine_copied", copy / "machine.py")
    monkeypatch.delenv("SAETRANSFER_CODE_COMMIT", raising=False)
    assert machine.code_state() == {"commit": None, "modified": None}
    monkeypatch.setenv("SAETRANSFER_CODE_COMMIT", "a277292")
    assert machine.code_state() == {"commit": "a277292", "modified": None, "commit_source": "SAETRANSFER_CODE_COMMIT"}


def test_the_wall_split_charges_each_part_its_own_time_only(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench_floor.time, "perf_counter", lambda: clock[0])
    split = bench_floor._WallSplit("cpu")

    def unembed():
        clock[0] += 3.0

    timed_unembed = split._timed("unembed", unembed)

    def forward():  # as the floor's: 2 s of blocks around a nested unembedding
        clock[0] += 1.0
        timed_unembed()
        clock[0] += 1.0

    split._timed("forward", forward)()
    timed_unembed()
    assert split.seconds["forward"] == 2.0 and split.seconds["unembed"] == 6.0


def test_the_wall_split_puts_back_what_it_times():
    functions = [f for fs in bench_floor._wall_functions().values() for f in fs]
    before = [vars(owner).get(name) for owner, name in functions]
    with bench_floor._WallSplit("cpu"):
        assert all(vars(owner).get(name) is not raw for (owner, name), raw in zip(functions, before))
    assert [vars(owner).get(name) for owner, name in functions] == before
    from saetransfer import metrics

    assert isinstance(vars(metrics.ActiveLatents)["of"], classmethod)  # still callable as before


def test_the_pass_levels_read_only_the_samples_inside_the_pass():
    # loading reaches 900 MB before the pass; inside it the level is 700-710 with one 800 MB spike
    samples = [(0.0, 500.0), (1.0, 900.0), *((2.0 + i / 10, 700.0 + i) for i in range(11)), (3.05, 800.0),
               (4.0, 950.0)]
    levels = bench_floor.pass_levels(samples, [(2.0, 3.1)])
    assert levels == {"pass_p50_mb": 705.0, "pass_p90_mb": 710.0}
    two = bench_floor.pass_levels(samples, [(2.0, 2.05), (3.9, 4.1)])  # passes of two groups: 700 and 950
    assert two == {"pass_p50_mb": 700.0, "pass_p90_mb": 950.0}
    assert bench_floor.pass_levels(samples, []) == {"pass_p50_mb": None, "pass_p90_mb": None}


def test_the_peak_fields_take_medians_per_budget_and_keep_every_process():
    def child(n_tokens, peak, level):
        return {"n_tokens": n_tokens, "peak_rss_mb": peak, "before_pass_mb": 570.0, "pass_p50_mb": level,
                "pass_p90_mb": level + 20}

    out = bench_floor.peak_fields([child(16, 870, 710), child(16, 770, 712), child(16, 800, 714)],
                                  [child(128, 920, 730), child(128, 850, 726), child(128, 860, 728)])
    assert (out["peak_n_mb"], out["peak_8n_mb"]) == (800, 860) and out["peak_8n_over_n"] == pytest.approx(860 / 800)
    assert out["peak_runs_mb"] == {"n": [870, 770, 800], "8n": [920, 850, 860]}
    assert out["peak_levels_runs_mb"]["pass_p50_mb"] == {"n": [710, 712, 714], "8n": [730, 726, 728]}
    assert out["pass_p50_8n_over_n"] == pytest.approx(728 / 712)
    older = bench_floor.peak_fields([{"n_tokens": 16, "peak_rss_mb": 800.0}], [{"n_tokens": 128, "peak_rss_mb": 840.0}])
    assert older["pass_p50_8n_over_n"] is None  # children from before the levels were sampled
    assert older["peak_levels_runs_mb"]["before_pass_mb"] == {"n": [None], "8n": [None]}


def test_the_rss_timeline_watches_the_pass_and_puts_it_back(monkeypatch):
    from saetransfer import engine

    def stream(*args, **kwargs):
        time.sleep(0.05)
        return "result"

    monkeypatch.setattr(engine, "_stream_group", stream)
    timeline = bench_floor._RssTimeline()
    with timeline.watching():
        assert engine._stream_group is not stream and engine._stream_group() == "result"
    assert engine._stream_group is stream
    assert len(timeline.windows) == 1 and timeline.before_pass_mb > 0
    if Path("/proc/self/statm").exists():
        assert bench_floor.pass_levels(timeline.samples, timeline.windows)["pass_p50_mb"] > 0


def test_a_gpu_step_cut_short_keeps_what_it_printed_and_stops_what_it_started(tmp_path):
    # a lent machine runs a command for minutes: the step past its deadline must leave its progress behind
    # and no child of it (pytest's xdist workers) running beside the next step
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; print('phase 1 done', flush=True); print('on stderr', file=sys.stderr, "
              f"flush=True); child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)")
    start = time.perf_counter()
    code, stdout, stderr = run_gpu._run([sys.executable, "-c", script], tmp_path / "step.log", timeout=3)
    assert code is None and time.perf_counter() - start < 30
    assert "phase 1 done" in stdout and "on stderr" in stderr and "phase 1 done" in (tmp_path / "step.log").read_text()
    child = int(pid_file.read_text())
    for _ in range(50):  # SIGKILL is delivered at once; the orphan may linger as a zombie until reaped
        if not _running(child):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child {child} still runs")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_gpu_step_that_ends_in_time_reports_its_exit_code(tmp_path):
    code, stdout, _ = run_gpu._run([sys.executable, "-c", "print('ok'); raise SystemExit(3)"], tmp_path / "s.log", 30)
    assert (code, stdout.strip()) == (3, "ok")
