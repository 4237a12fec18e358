"""The report's first screen: which pairs transfer (verdict beside the pair, then why), and the claims.

One row per registry entry: its primary evaluation (`Entry.primary`), so the answer stays one screen
however many axes a pair has (`axes` shows the others). The table is bounded to `HEADLINE_COLUMNS` so
it fits a 1400 px window; every number is the `Comparisons` estimate the verdict compared with a
threshold, as value ± half its interval's width.
"""

from __future__ import annotations

from saetransfer.report.doc import Block, Heading, Inline, Para, Span, Table
from saetransfer.report.fmt import MISSING, plus_minus, slug, verdict_class
from saetransfer.report.records import Entry
from saetransfer.report.summary import NOT_RUN, reasons
from saetransfer.results import Comparisons

HEADLINE_METRICS = (("ev_ratio", "EV ratio"), ("kl_score_drop", "KL drop"), ("ce_score_drop", "CE drop"),
                    ("l0_ratio", "L0 ratio"), ("norm_ratio", "norm ratio"), ("cosine", "cosine"))
"""`Comparisons` fields shown in the headline, with their column headers (short: the table must fit 1400 px;
"How to read" spells them out)."""
HEADLINE_HEADERS = ("pair", "verdict", "why", *(label for _, label in HEADLINE_METRICS), "expected")
HEADLINE_COLUMNS = len(HEADLINE_HEADERS)


def anchor(entry: Entry) -> str:
    return f"pair-{slug(entry.test_id)}"


def ran_first(entries: list[Entry]) -> list[Entry]:
    """Evaluated pairs first, then the ones that did not run; each group in test-id order."""
    return sorted(entries, key=lambda e: (e.result is None, e.test_id))


def primaries(entries: list[Entry]) -> list[Entry]:
    """Each registry entry's primary evaluation, evaluated ones first (`ran_first`)."""
    return [e for e in ran_first(entries) if e.primary]


def verdict_cell(entry: Entry) -> Inline:
    """'fails as is; transfers after norm matching' when the norm-matched verdict differs."""
    verdict = entry.verdict or NOT_RUN
    primary = Span(verdict, css=verdict_class(verdict))
    matched = entry.norm_matched_verdict
    if matched is None or matched == verdict:
        return primary
    return (primary, " as is; ", Span(matched, css=verdict_class(matched)), " after norm matching")


def expected_text(entry: Entry) -> str:
    exp = entry.expected_verdict
    if exp is None:
        return MISSING
    notes = [note for note in ("extrapolated", "norm_matched") if (entry.expected or {}).get(note)]
    qualifier = f" ({', '.join(n.replace('_', '-') for n in notes)})" if notes else ""
    return f"{exp}{qualifier}{ {True: ' ✓', False: ' ✗', None: ''}[entry.matches]}"


def why_text(entry: Entry) -> str:
    # the headline reason only; the per-metric lines with their intervals are in the pair's section
    parts = list(reasons(entry)[:1])
    if entry.result is not None and entry.result.masking is not None and not entry.result.masking.judged:
        parts += entry.result.masking.reasons
    if entry.skip_reason is not None:
        parts.append(("latest run did not evaluate it: " if entry.result is not None else "") + entry.skip_reason)
    return "; ".join(parts) or MISSING


def _metric_cells(comparisons: Comparisons | None) -> tuple[str, ...]:
    return tuple(MISSING if comparisons is None else plus_minus(getattr(comparisons, name))
                 for name, _ in HEADLINE_METRICS)


def headline_table(entries: list[Entry]) -> Table:
    rows = tuple((Span(e.pair_id, href=f"#{anchor(e)}", code=True), verdict_cell(e), why_text(e),
                  *_metric_cells(None if e.result is None else e.result.comparisons), expected_text(e))
                 for e in primaries(entries))
    return Table(HEADLINE_HEADERS, rows, css="headline")


def claims_blocks(entries: list[Entry]) -> list[Block]:
    """The claims x pairs matrix (`report.claims`, primary evaluations; the others' claims are in their own
    sections); nothing when no record carries claims."""
    from saetransfer.report.claims import claims_matrix

    return claims_matrix(ran_first(entries)) if any(e.claims for e in entries) else []
