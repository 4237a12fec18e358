"""Command line: `python -m saetransfer {evidence,run,report,pairs,zoo} ...`.

- evidence [PYTEST ARGS]  the main job: run the findings (tiny zoo by default; without a selection in
                          up to 2 xdist workers) and write the report
- run PAIR                a pair's full result as JSON, for scripts and notebooks
- report                  re-render reports/ from the records on disk, without recomputing
- pairs                   list the registry
- zoo build|saes|install|verify   the embedded tiny model zoo
"""

from __future__ import annotations

import argparse
import sys


def _offline_unless(allow_hub: bool) -> None:
    from saetransfer.offline import set_offline_environment

    set_offline_environment(allow_hub=allow_hub)


EVIDENCE_WORKERS = 2
"""pytest-xdist workers for a whole evidence run (at most one per core): two halve the zoo's cold run on
2 cores (3 min 40 s in one process, 2 min in two), and each worker holds its own pair's two models (a Hub
pair on a CPU takes ~5 GB), so more are the user's choice (`-n N`)."""

_CHOOSES_PROCESSES = ("-n", "--numprocesses", "--dist", "--pdb", "--trace", "--gpu", "-k", "-m")
"""Options after which `evidence` adds no workers: xdist's own, the debuggers (which xdist refuses),
--gpu (the README's `-n N` gives one worker per listed GPU) and a selection (often one pass, which one
process computes fastest: a worker's torch threads are the cores divided by the workers)."""


def evidence_args(args: list[str], cores: int) -> list[str]:
    """pytest's arguments for `evidence ARGS`: -v (a line per finding as it completes), then
    min(cores, EVIDENCE_WORKERS) xdist workers unless that is one (a lone worker is one process more) or
    `args` choose (an option of `_CHOOSES_PROCESSES`, `-nN`/`-kEXPR`, `-p no:xdist`), then `args`."""
    chosen = any(a.split("=")[0] in _CHOOSES_PROCESSES or a[:2] in ("-n", "-k", "-m") or a.endswith("no:xdist")
                 for a in args)
    workers = min(cores, EVIDENCE_WORKERS)
    return ["-v", *([] if chosen or workers < 2 else ["-n", str(workers)]), *args]


def _evidence(args: list[str]) -> int:
    import os

    import pytest

    from saetransfer.paths import REPO_ROOT, REPORTS

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    code = pytest.main([str(REPO_ROOT / "findings"), *evidence_args(args, cores)])
    print(f"\nreport: {REPORTS / 'README.md'}  (HTML: {REPORTS / 'report.html'})")
    return int(code)


def _run(ns: argparse.Namespace) -> int:
    from saetransfer.config import RunConfig
    from saetransfer.engine import run
    from saetransfer.loading.preflight import check_token_budget, preflight
    from saetransfer.registry import get_pair, load_registry, registry_files

    if ns.tokens is not None:
        check_token_budget(ns.tokens)  # before the registry: `--tokens 0` never falls back to the default
    pair = get_pair(load_registry(registry_files(ns.registry)), ns.pair)
    config = RunConfig.for_pair(pair, tokens=ns.tokens, gpu=ns.gpu, hub=ns.hub, progress=True)
    for warning in preflight(pair, config):  # here too, not only in the engine: a cached result skips it
        print(f"warning: {warning}", file=sys.stderr)
    result = run(pair, config, refresh=ns.refresh)
    print(result.to_json())
    return 0


def _report() -> int:
    from saetransfer.paths import RECORDS, REPORTS
    from saetransfer.report import render_report, verdict_table

    render_report(RECORDS, REPORTS)
    print(verdict_table(RECORDS))
    print(f"report: {REPORTS / 'README.md'}")
    return 0


def _pairs(ns: argparse.Namespace) -> int:
    from saetransfer.registry import load_registry, registry_files

    for pair in load_registry(registry_files(ns.registry)):
        expected = pair.expected.verdict if pair.expected else "-"
        where = "gpu" if pair.needs_gpu else ("hub" if pair.needs_hub else "local")
        print(f"{pair.test_id:70s} {where:5s} expected: {expected}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evidence"]:  # everything after goes to pytest untouched
        _offline_unless("--hub" in argv)
        return _evidence(argv[1:])
    if argv[:1] == ["zoo"]:
        _offline_unless(False)
        from saetransfer.zoo.cli import main as zoo_main

        return zoo_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m saetransfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("evidence", help="run the findings and write the report (args go to pytest)")
    sub.add_parser("zoo", help="build, add SAEs to, install or verify the tiny model zoo")
    run = sub.add_parser("run", help="print one pair's full result as JSON")
    run.add_argument("pair", help="pair id or test id (see `pairs`)")
    run.add_argument("--tokens", type=int, default=None)
    run.add_argument("--gpu", action="store_true")
    run.add_argument("--hub", action="store_true")
    run.add_argument("--refresh", action="store_true")
    run.add_argument("--registry", action="append", default=[])
    sub.add_parser("report", help="re-render reports/ from records")
    pairs = sub.add_parser("pairs", help="list the registry")
    pairs.add_argument("--registry", action="append", default=[])
    ns = parser.parse_args(argv)
    _offline_unless(getattr(ns, "hub", False))
    from saetransfer.loading import LoadingError
    from saetransfer.registry import RegistryError, UnknownPairError

    try:
        if ns.command == "run":
            return _run(ns)
        if ns.command == "report":
            return _report()
        return _pairs(ns)
    except (RegistryError, UnknownPairError, LoadingError) as err:  # bad input: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
