"""A registry entry's evaluations side by side: per dataset, direction, SAE and hook (issue "axes").

    blocks = further_evaluations(entries)   # under the headline: how many more per pair, linked
    blocks = axes_section(entries, plots)   # "Across axes": verdict by SAE, then one table (+ layer plot) per pair

The headline keeps one row per entry (its primary evaluation); these show what the other evaluations
say, with the same metrics and formats (`headline.HEADLINE_METRICS`, `fmt.plus_minus`).
"""

from __future__ import annotations

from collections import Counter

from saetransfer.report import fmt
from saetransfer.report.doc import Block, Bullets, Heading, Image, Inline, Para, Span, Table
from saetransfer.report.fmt import MISSING, VERDICT_COLOURS, plus_minus, slug
from saetransfer.report.headline import HEADLINE_METRICS, anchor, primaries, verdict_cell
from saetransfer.report.plots import Plot
from saetransfer.report.records import Entry
from saetransfer.report.summary import NOT_RUN

AXES_ANCHOR = "across-axes"
PRIMARY_MARK = " (primary)"
AXES_HEADERS = ("evaluated on", "direction", "SAE", "hook", "SAE trained on", "verdict",
                *(label for _, label in HEADLINE_METRICS))


def axes_anchor(pair_id: str) -> str:
    return f"axes-{slug(pair_id)}"


def by_pair(entries: list[Entry]) -> dict[str, list[Entry]]:
    """Entries grouped by registry entry: pairs in headline order (then pairs without a primary record),
    each pair's evaluations in registry order (`Entry.order`)."""
    order = {e.pair_id: i for i, e in enumerate(primaries(entries))}
    out: dict[str, list[Entry]] = {}
    for e in sorted(entries, key=lambda e: (order.get(e.pair_id, len(order)), e.pair_id, e.order)):
        out.setdefault(e.pair_id, []).append(e)
    return out


def sae_text(entry: Entry) -> str:
    """'tiny-res-relu (standard)': the SAE's registry name and architecture."""
    name = entry.sae_name or entry.sae or MISSING
    return name if entry.sae_architecture is None else f"{name} ({entry.sae_architecture})"


def evaluation_parts(entry: Entry) -> tuple[str | Span, ...]:
    """' · SAE tiny-res-relu (standard) at `hook` · base → finetune · on prose (SAE trained on …)'."""
    parts: list[str | Span] = []
    if entry.sae or entry.hook or entry.sae_name:
        parts += [f" · SAE {sae_text(entry)} at ", Span(entry.hook or MISSING, code=True)]
    parts.append(f" · {fmt.direction(entry.direction)}")
    if entry.dataset is not None:
        parts.append(f" · evaluated on {entry.dataset}")
    if entry.sae_trained_on is not None:
        parts.append(f" (SAE trained on {entry.sae_trained_on})")
    return tuple(parts)


def _tally(entries: list[Entry]) -> str:
    counts = Counter(e.verdict or NOT_RUN for e in entries)
    ordered = [v for v in VERDICT_COLOURS if v in counts] + sorted(set(counts) - set(VERDICT_COLOURS))
    return ", ".join(f"{counts[v]} {v}" for v in ordered)


def further_evaluations(entries: list[Entry]) -> list[Block]:
    """Under the headline: per pair with more than its primary evaluation, how many more and what they say."""
    items: list[Inline] = []
    for pair_id, members in by_pair(entries).items():
        further = [e for e in members if not e.primary]
        if not further:
            continue
        missing = "" if any(e.primary for e in members) else " (no record of its primary evaluation)"
        plural = "s" if len(further) != 1 else ""
        items.append((Span(pair_id, code=True), f": {len(further)} further evaluation{plural}{missing} "
                      f"({_tally(further)}), side by side in ", Span("its across-axes table",
                                                                     href=f"#{axes_anchor(pair_id)}"), "."))
    if not items:
        return []
    return [Para("Each row is a pair's primary evaluation: its first SAE and hook, on its first dataset, base → "
                 "finetune. The other evaluations (other datasets, the finetune-native SAE on the base, other SAEs "
                 "and layers):"), Bullets(tuple(items))]


def _row(entry: Entry) -> tuple[Inline, ...]:
    comparisons = None if entry.result is None else entry.result.comparisons
    where = Span((entry.dataset or MISSING) + (PRIMARY_MARK if entry.primary else ""), href=f"#{anchor(entry)}")
    return (where, fmt.direction(entry.direction), sae_text(entry), Span(entry.hook or MISSING, code=True),
            entry.sae_trained_on or MISSING, verdict_cell(entry),
            *(MISSING if comparisons is None else plus_minus(getattr(comparisons, name)) for name, _ in HEADLINE_METRICS))


def axes_table(members: list[Entry]) -> Table:
    """One row per evaluation of a pair, in registry order (the primary first; forward beside reverse)."""
    return Table(AXES_HEADERS, tuple(_row(e) for e in members), css="axes")


def sae_matrix(entries: list[Entry]) -> list[Block]:
    """Pairs x SAEs of verdicts at each pair's primary hook, base -> finetune, on its first dataset.

    Columns: the SAEs of every pair evaluated with two or more there; rows: the pairs with any of them.
    Nothing when no pair has two SAEs at its primary hook (the headline's verdict column says it all)."""
    cells: dict[str, dict[str, Entry]] = {}
    links: dict[str, str] = {}
    for pair_id, members in by_pair(entries).items():
        primary = next((e for e in members if e.primary), None)
        if primary is None:
            continue
        links[pair_id] = axes_anchor(pair_id) if len(members) >= 2 else anchor(primary)
        for e in members:
            if e.direction == "forward" and e.hook == primary.hook and e.dataset == primary.dataset:
                cells.setdefault(pair_id, {}).setdefault(e.sae_name or e.sae or MISSING, e)
    columns: dict[str, str] = {}
    for row in cells.values():
        if len(row) >= 2:
            for name, e in row.items():
                if columns.get(name) is None:
                    columns[name] = sae_text(e)
    if not columns:
        return []
    rows = tuple((Span(pair_id, href=f"#{links[pair_id]}", code=True),
                  *(verdict_cell(row[c]) if c in row else MISSING for c in columns))
                 for pair_id, row in cells.items() if set(row) & set(columns))
    return [Heading(3, "Verdict by SAE", "verdict-by-sae"),
            Para("How the verdict depends on the SAE as well as the finetune: each pair's evaluations at its primary "
                 "hook, base → finetune, on its first dataset."),
            Table(("pair", *columns.values()), rows)]


def axes_section(entries: list[Entry], layer_plots: dict[str, tuple[str, Plot]]) -> list[Block]:
    """'Across axes': the verdict-by-SAE matrix, then per pair with several evaluations its table and, with
    evaluations at two or more layers, its metrics against the layer. Nothing when no pair has more than one."""
    several = {pair_id: members for pair_id, members in by_pair(entries).items() if len(members) >= 2}
    if not several:
        return []
    blocks: list[Block] = [
        Heading(2, "Across axes", AXES_ANCHOR),
        Para("Every evaluation of a pair side by side: per evaluation dataset, direction (base → finetune: the base "
             "SAE on the finetune; finetune → base: the finetune-native SAE on the base, as in Kissane et al.), SAE "
             "and hook. Numbers are the headline's (value ± half the 95 % interval); the first column links to the "
             "evaluation's section. Only the primary evaluation carries the registry's expectation and feeds the "
             "cross-pair claims."),
        *sae_matrix(entries)]
    for pair_id, members in several.items():
        blocks += [Heading(3, pair_id, axes_anchor(pair_id)), axes_table(members)]
        if pair_id in layer_plots:
            rel, plot = layer_plots[pair_id]
            blocks.append(Image(rel, plot.alt, plot.png))
    return blocks
