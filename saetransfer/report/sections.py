"""The report's content as document blocks: the answer first, the axes, how to read it, then one section per
evaluation (primaries in full, the others compact)."""

from __future__ import annotations

from collections.abc import Callable

from saetransfer.report.axes import axes_section, further_evaluations
from saetransfer.report.doc import Block, Bullets, Heading, Image, Para, Span, Table
from saetransfer.report.fmt import MISSING, num
from saetransfer.report.headline import anchor, claims_blocks, headline_table, primaries, ran_first
from saetransfer.report.pair_section import Plots, compact_section, pair_section
from saetransfer.report.plots import Plot
from saetransfer.rules import HEADERS, rule_rows, rules_markdown
from saetransfer.report.records import Entry
from saetransfer.results import FeatureTransfer

TITLE = "SAE transfer report"
CAVEAT = FeatureTransfer.__dataclass_fields__["caveat"].default


def verdict_rules() -> str:
    """The verdict rule table as Markdown, generated from `verdict.Thresholds` (see `saetransfer.rules`)."""
    return rules_markdown()


def rules_table() -> Table:
    """The same table as a report block: one row per threshold, its current value and published evidence."""
    return Table(HEADERS, tuple((r.group, r.metric, r.condition, Span(r.field, code=True), r.value_text, r.source)
                                for r in rule_rows()))


def how_to_read() -> list[Block]:
    return [
        Heading(2, "How to read this report", "how-to-read"),
        Para(("Verdict rules, one row per field of ", Span("saetransfer.verdict.Thresholds", code=True),
              " with its current value; the order of the rules and what happens to a missing metric are in ",
              Span("saetransfer/verdict.py", code=True), "'s docstring:")),
        rules_table(),
        Bullets((
            "A registry entry is evaluated per dataset, per (hook, SAE) axis and, where it has a finetune-native "
            "SAE, in both directions (finetune → base: that SAE on the base model, whose record then names the "
            "finetune as its base). The headline has one row per entry, its primary evaluation (first axis, first "
            "dataset, base → finetune), which alone carries the published expectation and feeds the claims "
            "matrix and the cross-pair figure; Across axes puts all of a pair's evaluations side by side.",
            "The headline numbers are the quantities the verdict compares with a threshold, each as value ± half the "
            "width of its 95 % paired block-bootstrap interval; each pair's section gives the full intervals.",
            "cosine (activation cosine): per-token cosine of base vs finetune residual activations at the SAE hook on "
            "identical token ids, mean over kept positions (BOS/special tokens, norm outliers and non-finite values "
            "masked per model).",
            "EV ratio: explained variance (SAELens definition) of the base SAE on the finetune over that on the base. "
            "KL drop and CE drop: the KL score and CE recovered, base minus finetune. CE recovered can exceed 1 on a "
            "finetune because splicing pulls the activations back toward the base model; the KL score measures faithfulness to the "
            "finetune's own logits.",
            "L0 ratio: L0 of the base SAE on the finetune over its L0 on the base. norm ratio: ‖a_ft‖ / ‖a_base‖; "
            "when norm matching (Kissane et al.) changes the verdict the headline says so beside the primary verdict.",
            "not judged: too few positions were kept after masking to give a verdict; the reasons say which cause "
            "on which model.",
            "expected: the verdict a published source reports for the pair (✓ matches, ✗ differs); "
            "'not run' rows, last, are pairs the latest run could not evaluate, with the reason.",
            f"{num(float('nan'))} means undefined (NaN, e.g. a ratio whose baseline equals clean); "
            f"{MISSING} means not computed.",
            "Decoded text shows control characters as Unicode control pictures (␊ newline, ␉ tab).",
        )),
        Para(("Caveat on logit similarity (the post, §5.2): ", CAVEAT)),
    ]


def _sections(entries: list[Entry], section: Callable[[Entry], list[Block]], warnings: list[str]) -> list[Block]:
    body: list[Block] = []
    for entry in entries:
        try:
            body += section(entry)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a bad record, not a crash
            warnings.append(f"section of {entry.test_id} incomplete: {type(exc).__name__}: {exc}")
            body += [Heading(3, entry.test_id, anchor(entry)), Para(f"Could not render this record: {exc}")]
    return body


def document(entries: list[Entry], plots: dict[str, Plots], cross_pair: Plot | None, warnings: list[str],
             records_label: str, layer_plots: dict[str, tuple[str, Plot]] | None = None) -> list[Block]:
    """The whole report. A record that cannot be rendered gets a stub section and a line in `warnings`."""
    n_run = sum(e.result is not None for e in entries)
    n_pairs = len({e.pair_id for e in entries})
    blocks: list[Block] = [
        Heading(1, TITLE),
        Para(("Does a sparse autoencoder trained on a base model still work on its finetune? Rendered from every "
              f"record in {records_label}/ ({n_pairs} pairs; {len(entries)} evaluations: {n_run} evaluated, "
              f"{len(entries) - n_run} not run), so a partial run (pytest -k …) adds or updates rows and never "
              "drops one. Regenerate rather than edit.")),
    ]
    body: list[Block] = [Heading(2, "Which pairs transfer", "which-pairs-transfer"), headline_table(entries),
                         *further_evaluations(entries)]
    if cross_pair is not None:
        body.append(Image(f"plots/{cross_pair.name}.png", cross_pair.alt, cross_pair.png))
    body += [*claims_blocks(entries), *axes_section(entries, layer_plots or {}), *how_to_read(),
             Heading(2, "Pairs", "pairs"), *_sections(primaries(entries),
                                                      lambda e: pair_section(e, plots.get(e.test_id, {})), warnings)]
    further = [e for e in ran_first(entries) if not e.primary]
    if further:
        body += [Heading(2, "Further evaluations", "further-evaluations"),
                 Para("The evaluations besides each pair's primary one, compact: verdict, evidence and masking. "
                      "Their plots and measurement tables are left out (the records keep every number)."),
                 *_sections(further, compact_section, warnings)]
    if warnings:  # after the sections, which may add some
        blocks += [Heading(2, "Warnings", "warnings"), Bullets(tuple(warnings))]
    return blocks + body
