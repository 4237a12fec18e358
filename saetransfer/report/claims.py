"""The post's claims against the pairs: a claims x pairs matrix, and one pair's claims with their messages.

    blocks = claims_matrix(entries)      # after the headline table: primary evaluations only
    blocks = pair_claims(entry)          # in a pair's own section (every evaluation)

Cells read from the outcomes recorded in each pair's record (`Entry.claims`), never recomputed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from saetransfer.claims import CLAIMS_BY_ID, ClaimOutcome
from saetransfer.report.doc import Block, Bullets, Heading, Para, Span, Table
from saetransfer.report.headline import anchor
from saetransfer.report.records import Entry

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
EVIDENCE = "does not hold (evidence)"
"""A pair without a published expectation: the outcome is recorded, the suite does not fail on it."""
NOT_APPLICABLE = "n/a"
NOT_RUN = "not run"


def cell(outcome: ClaimOutcome | None, entry: Entry) -> str:
    """One matrix cell: what the latest run recorded for this claim on this pair."""
    if outcome is None:
        return NOT_RUN
    if outcome.holds is None:
        return NOT_APPLICABLE
    if outcome.holds:
        return HOLDS
    return DOES_NOT_HOLD if entry.expected else EVIDENCE


def _column_names(entries: Sequence[Entry]) -> list[str]:
    """Pair ids, or test ids where one pair has several (another SAE or hook)."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.pair_id] = counts.get(e.pair_id, 0) + 1
    return [e.pair_id if counts[e.pair_id] == 1 else e.test_id for e in entries]


def claims_matrix(entries: Sequence[Entry]) -> list[Block]:
    """Rows = claims, columns = evaluated pairs (primary evaluations); every claim that does not hold listed
    with its message. The further evaluations' claims are counted below, each in its own section."""
    evaluated = [e for e in entries if e.result is not None and e.primary]
    if not evaluated:
        return []
    by_entry = [{o.claim: o for o in e.claims} for e in evaluated]
    known = list(CLAIMS_BY_ID)
    recorded_only = sorted({c for outcomes in by_entry for c in outcomes} - set(known))  # from a newer/older run
    rows = []
    for claim_id in [*known, *recorded_only]:
        claim = CLAIMS_BY_ID.get(claim_id)
        statement = claim.statement if claim is not None else claim_id
        section = claim.section if claim is not None else next(
            o[claim_id].section for o in by_entry if claim_id in o)
        rows.append((statement, section, *(cell(o.get(claim_id), e) for o, e in zip(by_entry, evaluated))))
    blocks: list[Block] = [
        Heading(2, "The post's claims, pair by pair", anchor="claims"),
        Para(f"Each claim is decided on each pair independently. '{DOES_NOT_HOLD}' fails the suite for a pair with "
             f"a published expectation; for other pairs it is '{EVIDENCE}'. '{NOT_APPLICABLE}': the claim does not "
             f"apply (e.g. identity-pair claims on other pairs); '{NOT_RUN}': not decided in the latest run."),
        Table(headers=("claim", "section", *_column_names(evaluated)), rows=tuple(rows)),
    ]
    failing = [f"{name}: {o.message}" for name, outcomes in zip(_column_names(evaluated), by_entry)
               for o in outcomes.values() if o.holds is False]
    if failing:
        blocks.append(Bullets(tuple(failing)))
    not_run = [e.pair_id for e in entries if e.result is None and e.primary]
    if not_run:
        blocks.append(Para(f"Not evaluated here (no record): {', '.join(not_run)}."))
    blocks.extend(_further(entries))
    return blocks


def _further(entries: Sequence[Entry]) -> list[Block]:
    """One line on the claims of the evaluations the matrix leaves out (another dataset, direction, SAE or hook)."""
    further = [e for e in entries if not e.primary and e.claims]
    if not further:
        return []
    failing = [e for e in further if any(o.holds is False for o in e.claims)]
    text = (f"The matrix shows each pair's primary evaluation. Claims were also decided on {len(further)} further "
            f"evaluation{'s' if len(further) != 1 else ''} (each listed in its own section under Further "
            "evaluations); ")
    if not failing:
        return [Para(text + "every one holds or does not apply there.")]
    links: list[str | Span] = []
    for e in failing:
        links += [", " if links else "", Span(e.test_id, href=f"#{anchor(e)}", code=True)]
    return [Para((text + "some do not hold on: ", *links, "."))]


def pair_claims(entry: Entry) -> list[Block]:
    """One pair's claims with their messages (the values each was decided on)."""
    if not entry.claims:
        return []
    order = {c: i for i, c in enumerate(CLAIMS_BY_ID)}
    outcomes = sorted(entry.claims, key=lambda o: order.get(o.claim, len(order)))
    return [Table(headers=("claim", "outcome", "message"),
                  rows=tuple((o.claim, cell(o, entry), o.message) for o in outcomes))]
