"""Findings plumbing: one parametrized test per (claim family, registry pair).

Sections:
1. Parametrization: every test taking `pair` runs once per registry entry, id = the pair's test id.
   Real pairs carry `gpu`/`hub` markers; unavailable ones are skipped with the reason, never dropped.
2. `result`: the pair's PairResult from the keyed cache (computed once, even across xdist workers).
3. `metrics_snapshot`: rounded JSON snapshots, one file per test id and run configuration, compared
   with a per-metric tolerance; a missing snapshot does not fail the evidence run.
4. Records and the report: every finding writes its outcome, every claim (`test_post_claims.py`,
   `test_cross_pair.py`) its `ClaimOutcome`; the controller merges them and renders the report.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from saetransfer.rounding import round_significant, snap_to_stored

# 1. ---------------------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pair" not in metafunc.fixturenames:
        return
    from saetransfer.registry import load_registry, registry_files

    pairs = load_registry(registry_files(metafunc.config.getoption("--registry")))
    params = []
    for pair in pairs:
        # one xdist group per pass (`--dist loadgroup`, pytest.ini): the findings and claims of a pair's
        # evaluations on one dataset run on one worker, which computes them in one pass, while the other
        # workers take other pairs
        marks = [pytest.mark.xdist_group(pair.group_id)]
        if pair.needs_gpu:
            marks.append(pytest.mark.gpu)
        if pair.needs_hub:
            marks.append(pytest.mark.hub)
        params.append(pytest.param(pair, id=pair.test_id, marks=marks))
    metafunc.parametrize("pair", params)


@pytest.fixture(scope="session")
def run_config(pytestconfig: pytest.Config) -> dict[str, Any]:
    """This session's options; `RunConfig.for_pair(pair, **run_config)` turns them into a pair's config."""
    return {"tokens": pytestconfig.getoption("--tokens"), "gpu": pytestconfig.getoption("--gpu"),
            "hub": pytestconfig.getoption("--hub")}


# 2. ---------------------------------------------------------------------------------------------
_RESULTS: dict[str, Any] = {}


@pytest.fixture
def result(pair: Any, run_config: dict[str, Any], pytestconfig: pytest.Config) -> Any:
    """The pair's PairResult (read-only). Skips with the reason only when this machine lacks what the pair
    needs (the Hub offline, a GPU); a wrong entry (a missing local path, a hook typo) fails with its message."""
    from saetransfer.config import RunConfig
    from saetransfer.engine import run
    from saetransfer.loading import LoadingError, availability
    from saetransfer.report.records import write_record, write_skip

    config = RunConfig.for_pair(pair, **run_config, progress=pytestconfig.getoption("verbose") > 0)
    if pair.test_id not in _RESULTS:
        try:
            reason = "needs --gpu (a CUDA machine; too large for a CPU run)" \
                if pair.needs_gpu and config.device != "cuda" else availability(pair, allow_hub=config.allow_hub)
            if reason is not None:
                write_skip(records_dir(pytestconfig), pair, reason)
                pytest.skip(reason)
            # with -v, the pass's progress bar (an ETA per pair and dataset) reaches the terminal past capture
            capture = pytestconfig.pluginmanager.getplugin("capturemanager")
            shown = capture.global_and_fixture_disabled() if config.progress and capture else contextlib.nullcontext()
            with shown:
                _RESULTS[pair.test_id] = run(pair, config, refresh=pytestconfig.getoption("--refresh"))
        except Exception as err:  # remembered, so the pair's other findings fail fast with the same error
            _RESULTS[pair.test_id] = err
            if not isinstance(err, LoadingError):
                raise
        else:
            write_record(records_dir(pytestconfig), pair, _RESULTS[pair.test_id])
    outcome = _RESULTS[pair.test_id]
    if isinstance(outcome, LoadingError):  # a bad input: its one-line message is the whole story
        pytest.fail(f"{type(outcome).__name__}: {outcome}", pytrace=False)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@pytest.fixture
def comparable_result(result: Any) -> Any:
    """The result, skipping findings 2-4 for pairs whose tokenizers differ (the post's code fed them wrong ids)."""
    if not result.comparable:
        pytest.skip(f"not comparable: {result.compatibility.reason}")
    return result


@pytest.fixture
def judged_result(comparable_result: Any) -> Any:
    """The result, skipping the metric findings for pairs that kept too few positions (`masking.KEPT_FLOOR`)."""
    if not comparable_result.judged:
        pytest.skip(f"not judged: {'; '.join(comparable_result.masking.reasons)}")
    return comparable_result


def records_dir(config: pytest.Config) -> Path:
    from saetransfer.paths import RECORDS

    return RECORDS


# 3. ---------------------------------------------------------------------------------------------
class RoundedJSONExtension(JSONSnapshotExtension):
    """One JSON file per test id and configuration; floats via `round_significant`, NaN as a string."""

    def serialize(self, data: Any, *, exclude: Any = None, include: Any = None, matcher: Any = None) -> Any:
        def rounding(data: Any, path: Any) -> Any:
            value = matcher(data=data, path=path) if matcher else data
            if isinstance(value, float) and not isinstance(value, bool):
                return round_significant(value) if math.isfinite(value) else str(value)
            return value

        return super().serialize(data, exclude=exclude, include=include, matcher=rounding)


@pytest.fixture
def metrics_snapshot(snapshot: Any, pair: Any, run_config: dict[str, Any], request: pytest.FixtureRequest) -> Any:
    """Compare a dict of metrics with its snapshot for this run configuration (token budget, device, dtype)."""
    from saetransfer.config import RunConfig

    run = RunConfig.for_pair(pair, **run_config)
    tag = f"{run.n_tokens}tok-{run.device}-{run.dtype}"
    assertion = snapshot.with_defaults(extension_class=RoundedJSONExtension)(name=tag)
    config = request.config
    updating = config.option.update_snapshots or config.option.update_new_snapshots_only

    def check(metrics: dict[str, Any]) -> None:
        location = Path(assertion.extension.get_location(test_location=assertion.test_location, index=tag))
        stored = json.loads(location.read_text()) if location.exists() else None
        if stored is None and not updating:
            if config.getoption("--require-snapshots"):
                pytest.fail(f"no snapshot for {request.node.name} [{tag}]; write it with: "
                            f"pytest findings --snapshot-update-new-only -k '{pair.test_id}'")
            request.node.user_properties.append(("new_snapshot", tag))
            return
        assert assertion == snap_to_stored(metrics, stored)

    return check


# 4. ---------------------------------------------------------------------------------------------
# Outcomes and new-snapshot notes travel to the controller on the test reports (user_properties
# survive xdist; config.stash does not), and only the controller writes the report.
_OUTCOMES: dict[str, dict[str, dict[str, str]]] = {}
_NEW_SNAPSHOTS: list[str] = []
_CLAIMS: dict[str, dict[str, Any]] = {}
"""test id -> claim id -> ClaimOutcome, as the claim tests recorded them."""
_EVIDENCE: dict[tuple[str, str], str] = {}
"""(test id, claim id) -> message, for claims that do not hold on a pair without an expectation."""
_CLAIM_PROPERTY = "claim_outcome"


@pytest.fixture
def record_claim(request: pytest.FixtureRequest) -> Any:
    """Record one ClaimOutcome for a test id; it reaches the pair's record whatever the test's outcome."""
    from saetransfer.claims import gates

    def record(pair: Any, outcome: Any) -> None:
        request.node.user_properties.append((_CLAIM_PROPERTY, (pair.test_id, gates(pair), outcome.to_dict())))

    return record


def _collect_claims(report: pytest.TestReport) -> None:
    from saetransfer.claims import ClaimOutcome

    for key, value in report.user_properties:
        if key == _CLAIM_PROPERTY:
            test_id, gated, data = value  # plain JSON on the report: it crosses from xdist workers
            outcome = ClaimOutcome.from_dict(data)
            _CLAIMS.setdefault(test_id, {})[outcome.claim] = outcome
            if outcome.holds is False and not gated:
                _EVIDENCE[test_id, outcome.claim] = outcome.message


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _collect_claims(report)
    # under `--dist loadgroup` xdist appends `@<group>` to the node id (pytest-xdist's remote.py)
    match = re.match(r".*::test_(finding\d\w*)\[(.+)\](?:@[^\[\]]*)?$", report.nodeid)
    if not match or (report.when != "call" and not (report.when == "setup" and report.outcome != "passed")):
        return
    finding, test_id = match.groups()
    reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else ""
    _OUTCOMES.setdefault(test_id, {})[finding] = {"outcome": report.outcome, "reason": str(reason)}
    _NEW_SNAPSHOTS.extend(f"{report.nodeid} [{v}]" for k, v in report.user_properties if k == "new_snapshot")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput") or not (_OUTCOMES or _CLAIMS):
        return
    from saetransfer.paths import REPORTS
    from saetransfer.report.records import merge_claims, merge_outcomes
    from saetransfer.report import render_report

    merge_outcomes(records_dir(session.config), _OUTCOMES)
    merge_claims(records_dir(session.config), {t: list(c.values()) for t, c in _CLAIMS.items()})
    render_report(records_dir(session.config), REPORTS)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not (_OUTCOMES or _CLAIMS):
        return
    from saetransfer.paths import REPORTS
    from saetransfer.report import verdict_table

    terminalreporter.write_sep("=", "which pairs transfer")
    terminalreporter.write_line(verdict_table(records_dir(config)))
    terminalreporter.write_line(f"report: {REPORTS / 'README.md'} and {REPORTS / 'report.html'}")
    if _NEW_SNAPSHOTS:
        terminalreporter.write_sep("-", f"{len(_NEW_SNAPSHOTS)} findings have no snapshot yet")
        for node in _NEW_SNAPSHOTS:
            terminalreporter.write_line(f"  {node}")
        terminalreporter.write_line("write them with: pytest findings --snapshot-update-new-only [-k ID]; "
                                    "the new files are what a reviewer reads")
    _summarise_evidence(terminalreporter)


def _summarise_evidence(terminalreporter: Any) -> None:
    """Claims that do not hold on pairs without an expectation: recorded as evidence, not failures."""
    if _EVIDENCE:
        terminalreporter.write_sep("-", f"{len(_EVIDENCE)} claims do not hold on pairs without an expected "
                                   "verdict (recorded as evidence, not failures)")
        for (test_id, _), message in sorted(_EVIDENCE.items()):
            terminalreporter.write_line(f"  {test_id}: {message}")
