"""One section per evaluation: for a primary, the verdict and its evidence with full intervals, then every
measurement with its plots (`pair_section`); for the others, the verdict, its evidence and the masking
(`compact_section`: the record keeps the rest, and the report stays small and quick to render)."""

from __future__ import annotations

import dataclasses

from saetransfer.report.axes import axes_anchor, evaluation_parts
from saetransfer.report.claims import pair_claims
from saetransfer.report.doc import Block, Bullets, Heading, Image, Para, Span, Table
from saetransfer.report.fmt import MISSING, interval, num, percent
from saetransfer.report.headline import anchor, expected_text, verdict_cell
from saetransfer.report.plots import SAE_LABELS, Plot
from saetransfer.report.records import Entry
from saetransfer.report.tables import field_table, side_by_side
from saetransfer.results import (Comparisons, CorrelationSummary, FeatureTransfer, Masking, NormMatching, PairResult,
                                 SaeEvaluation, SaeMetrics, VerdictResult, WorstTokens)

WORST_SHOWN = 8
"""Worst tokens listed per category (the engine keeps 16)."""
WORST_SCORES = {"lowest_cosine": "cosine", "highest_kl": "KL (nats)", "worst_reconstruction": "‖x − x̂‖² / ‖x‖²",
                "outliers": "‖a‖"}
Plots = dict[str, tuple[str, Plot]]


def _images(plots: Plots, *names: str) -> list[Block]:
    return [Image(plots[n][0], plots[n][1].alt, plots[n][1].png) for n in names if n in plots]


def _lines_table(primary: VerdictResult, matched: VerdictResult | None) -> Table:
    other = {line.metric: line for line in (matched.lines if matched else ())}
    rows = tuple((line.metric, line.grade or "not counted", MISSING if line.agreement is None else percent(line.agreement),
                  "yes" if line.uncertain else "no", (other[line.metric].grade or MISSING) if line.metric in other else MISSING)
                 for line in primary.lines)
    return Table(("line of evidence", "grade", "replicates agreeing", "uncertain", "grade after norm matching"), rows)


def _comparisons_table(primary: Comparisons, matched: Comparisons | None) -> Table:
    rows = tuple((Span(f.name, code=True), Comparisons.describe(f.name), interval(getattr(primary, f.name)),
                  MISSING if matched is None else interval(getattr(matched, f.name)))
                 for f in dataclasses.fields(Comparisons)
                 if getattr(primary, f.name) is not None or (matched and getattr(matched, f.name) is not None))
    return Table(("quantity", "what it is", "as is: value [95 % interval]", "after norm matching"), rows)


def verdict_blocks(entry: Entry) -> list[Block]:
    blocks: list[Block] = [Para(("Pair ", Span(entry.pair_id, code=True), *evaluation_parts(entry)))]
    r, source = entry.result, (entry.expected or {}).get("source")
    if r is not None:
        blocks.append(Para(("Verdict: ", *_parts(verdict_cell(entry)), f". Expected: {expected_text(entry)}"
                            + (f" (source: {source})" if source else "") + ".")))
        blocks.append(Bullets(r.verdict.reasons))
        nm = r.norm_matching
        if r.verdict.lines:
            blocks.append(_lines_table(r.verdict, None if nm is None else nm.verdict))
        if r.comparisons is not None:
            blocks += [Para("Every quantity the verdict compares with a threshold (paired block bootstrap):"),
                       _comparisons_table(r.comparisons, None if nm is None else nm.comparisons)]
        if nm is not None:
            blocks.append(_norm_matching(nm))
    if entry.skip_reason is not None:
        earlier = " The numbers below are from an earlier run's record." if r is not None else ""
        blocks.append(Para(f"Not run in the latest run: {entry.skip_reason}.{earlier}"))
    if entry.outcomes:
        rows = tuple((Span(name, code=True), o["outcome"], o["reason"] or MISSING)
                     for name, o in sorted(entry.outcomes.items()))
        blocks.append(Table(("finding", "outcome", "reason"), rows))
    blocks.extend(pair_claims(entry))
    return blocks


def _parts(inline: object) -> tuple:
    return inline if isinstance(inline, tuple) else (inline,)


def _norm_matching(nm: NormMatching) -> Block:
    return Para(f"Norm matching (Kissane et al.): the finetune's activations scaled by c = {num(nm.scale)} "
                f"(fitted on {num(nm.n_positions)} positions) before the base SAE; verdict then: "
                f"{nm.verdict.verdict} — {nm.verdict.reasons[0] if nm.verdict.reasons else MISSING}.")


def _masking(m: Masking) -> list[Block]:
    blocks: list[Block] = [
        Para("Masking (left out of every statistic, kept clean in the spliced pass), per model and cause:"),
        side_by_side({"base": m.base, "finetune": m.finetune}), field_table(m, skip=("base", "finetune"))]
    if not m.judged:
        blocks += [Para("Not judged: too few positions remain."), Bullets(m.reasons)]
    return blocks


def _sae(sae: SaeEvaluation) -> list[Block]:
    sides: dict[str, SaeMetrics] = {SAE_LABELS[n]: s for n in SAE_LABELS if (s := getattr(sae, n)) is not None}
    flags = tuple(f"{label}: {flag}" for label, s in sides.items() for flag in s.flags)
    return [side_by_side(sides), *([Para("Flags:"), Bullets(flags)] if flags else [])]


def chance_text(f: FeatureTransfer) -> str:
    """'… r ≥ 0.8: 17.2 %; chance … 0.405 %; split halves 16.1 / 17.1 %': the number beside its floor and noise."""
    act = f.buckets.regular.activation_correlation
    text = f"regular latents with activation r ≥ 0.8: {percent(act.fraction_transferred)}"
    if f.chance is None:
        return text
    halves = " / ".join(num(100 * h.fraction_transferred, 3) for h in f.chance.split_half) + " %"
    return (f"{text}; chance (randomly paired latents) {percent(f.chance.permuted.fraction_transferred)}; "
            f"split halves {halves}. Logit r mean {num(f.buckets.regular.logit_correlation.mean)}; "
            f"random directions {num(f.chance.logit_random.mean)}")


def _buckets(f: FeatureTransfer) -> Table:
    rows = []
    for name in (fl.name for fl in dataclasses.fields(f.buckets)):
        b = getattr(f.buckets, name)
        act: CorrelationSummary | None = getattr(b, "activation_correlation", None)
        rows.append((name, num(b.n_total), MISSING if act is None else num(act.mean),
                     MISSING if act is None else percent(act.fraction_transferred),
                     num(getattr(b, "activation_error_mean", None)), num(getattr(b, "other_model_max_activation", None)),
                     num(b.logit_correlation.mean)))
    return Table(("bucket", "latents", "activation r mean", "r ≥ 0.8", "log-activation error mean",
                  "other model's max activation", "logit r mean"), tuple(rows))


def _features(f: FeatureTransfer, plots: Plots) -> list[Block]:
    return [_buckets(f), Para(chance_text(f)), field_table(f, skip=("caveat",)),
            *_images(plots, "feature_correlations"), Para(("Caveat: ", f.caveat))]


def _worst_tokens(worst: WorstTokens) -> list[Block]:
    blocks: list[Block] = []
    for name, score in WORST_SCORES.items():
        items = getattr(worst, name)[:WORST_SHOWN]
        if not items:
            continue
        rows = tuple((num(rank), num(i.score), Span(i.context, code=True), Span(i.token, code=True),
                      Span(i.next, code=True), f"{i.row}:{i.position}") for rank, i in enumerate(items, 1))
        blocks += [Para(f"{WorstTokens.describe(name).capitalize()}:"),
                   Table(("#", score, "context before", "token", "next", "row:position"), rows)]
    return blocks


def _measurements(r: PairResult, plots: Plots) -> list[Block]:
    blocks: list[Block] = [Heading(4, "Tokenizers"), field_table(r.tokenizer), field_table(r.compatibility)]
    if r.similarity is not None:
        blocks += [Heading(4, "Activation similarity"), *_images(plots, "activation_similarity", "per_position"),
                   field_table(r.similarity)]
    if r.masking is not None:
        blocks += _masking(r.masking)
    if r.sae is not None:
        blocks += [Heading(4, "SAE quality"), *_sae(r.sae), *_images(plots, "density_histograms", "density_scatter")]
    if r.density is not None:
        blocks.append(Para(f"log10-density correlation base vs finetune: {num(r.density.log10_density_correlation)}"))
    if r.features is not None:
        blocks += [Heading(4, "Feature transfer by density bucket"), *_features(r.features, plots)]
    if r.worst_tokens is not None:
        blocks += [Heading(4, "Where transfer breaks"), *_worst_tokens(r.worst_tokens)]
    blocks += [Heading(4, "Provenance"), field_table(r.provenance)]
    if r.provenance.bootstrap is not None:
        blocks += [Para("Bootstrap:"), field_table(r.provenance.bootstrap)]
    return blocks


def pair_section(entry: Entry, plots: Plots) -> list[Block]:
    """Everything about one test id; sections the record lacks (an incompatible pair) are left out."""
    blocks: list[Block] = [Heading(3, entry.test_id, anchor(entry)), *verdict_blocks(entry)]
    return blocks if entry.result is None else blocks + _measurements(entry.result, plots)


def compact_section(entry: Entry) -> list[Block]:
    """A further (non-primary) evaluation: verdict, reasons, graded lines, comparisons, norm matching,
    outcomes, claims and masking; no plots and no measurement tables."""
    blocks: list[Block] = [Heading(3, entry.test_id, anchor(entry)), *verdict_blocks(entry)]
    r = entry.result
    if r is not None and r.masking is not None:
        blocks += _masking(r.masking)
    blocks.append(Para(("Beside the pair's other evaluations: ",
                        Span("across axes", href=f"#{axes_anchor(entry.pair_id)}"),
                        ". Every other measurement is in the record.")))
    return blocks
