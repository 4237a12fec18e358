"""The report's content as document blocks: the summary table, how to read it, one section per pair."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from saetransfer.report.doc import Block, Bullets, Heading, Image, Para, Span, Table
from saetransfer.rules import HEADERS, rule_rows, rules_markdown
from saetransfer.report.fmt import MISSING, arrow, num, pct, slug
from saetransfer.report.plots import SAE_LABELS, Plot
from saetransfer.report.records import Entry
from saetransfer.report.summary import get, reasons, summary_row

TITLE = "SAE transfer report"
WORST_SHOWN = 8
"""Worst tokens listed per category (the engine keeps 16)."""
LIST_SHOWN = 8
"""Items of a list value shown in key/value tables before '… (N more)'."""
CAVEAT_FALLBACK = ("Logit similarity shares one W_dec between base and finetune, so it mostly measures how much W_U "
                   "changed (the post, §5.2); activation correlation follows the encoder direction only.")
SUMMARY_HEADERS = ("pair", "SAE", "hook", "tokenizer", "activation cosine", "explained variance base → ft",
                   "KL score base → ft", "CE recovered base → ft", "L0 ratio ft/base",
                   "regular-feature corr (≥ 0.8)", "verdict", "expected", "reasons")
SAE_METRICS = (
    ("explained_variance", "explained variance (SAELens)"), ("r2_global", "R² global (the post)"),
    ("mse", "MSE per token"), ("mse_per_element", "MSE per element"), ("cossim", "cos(x, x̂)"),
    ("l2_ratio", "‖x̂‖ / ‖x‖"), ("l0", "L0"), ("l1", "L1"), ("dead_fraction", "dead fraction"),
    ("dense_fraction", "dense fraction (> 10 %)"), ("ce_clean", "CE clean"), ("ce_spliced", "CE spliced"),
    ("ce_ablation", "CE zero-ablated"), ("ce_delta", "loss delta (spliced − clean)"),
    ("ce_loss_score", "CE recovered"), ("kl_spliced", "KL(clean ‖ spliced)"), ("kl_ablation", "KL(clean ‖ ablated)"),
    ("kl_div_score", "KL score"), ("dropped_vocab_mass_mean", "dropped vocab mass, mean"),
    ("dropped_vocab_mass_max", "dropped vocab mass, max"), ("n_tokens", "tokens scored"),
)
SIMILARITY_ORDER = ("cosine_mean", "cosine_stderr", "cosine_mean_all_positions", "cosine_mean_excluding_position_0",
                    "distance_mean", "relative_distance_mean", "norm_ratio_mean", "base_norm_mean")
MASKING_ORDER = ("threshold", "threshold_kind", "base_mean_norm", "outlier_fraction", "n_positions", "n_special",
                 "n_outlier_base", "n_outlier_finetune", "n_outlier_union", "n_kept")
PROVENANCE_ORDER = ("pair_id", "test_id", "base", "finetune", "sae", "sae_architecture", "d_sae", "hook", "dataset",
                    "dataset_revision", "n_tokens", "n_rows", "context_size", "prepend_bos", "seed", "token_sha256",
                    "device", "dtype", "metric_version", "versions")
WORST = (("lowest_cosine", "lowest activation cosine", "cosine"),
         ("highest_kl", "highest KL(clean ‖ spliced) on the finetune", "KL (nats)"),
         ("worst_reconstruction", "worst reconstruction on the finetune", "‖x − x̂‖² / ‖x‖²"),
         ("outliers", "norm outliers (excluded from every metric)", "‖a‖"))
BUCKET_ORDER = ("regular", "dead_in_base", "dead_in_finetune")


def verdict_rules() -> str:
    """The verdict rule table as Markdown, generated from `verdict.Thresholds` (see `saetransfer.rules`)."""
    return rules_markdown()


def rules_table() -> Table:
    """The same table as a report block: one row per threshold, its current value and published evidence."""
    return Table(HEADERS, tuple((r.group, r.metric, r.condition, Span(r.field, code=True), r.value_text, r.source)
                                for r in rule_rows()))


def anchor(entry: Entry) -> str:
    return f"pair-{slug(entry.test_id)}"


def value_text(value: Any) -> str:
    """Any record value as one line: numbers via `num`, dicts as 'k: v; …', long lists shortened."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {value_text(v)}" for k, v in sorted(value.items())) or MISSING
    if isinstance(value, (list, tuple)):
        shown = ", ".join(value_text(v) for v in value[:LIST_SHOWN])
        more = len(value) - LIST_SHOWN
        return f"[{shown}{f', … ({more} more)' if more > 0 else ''}]"
    return num(value)


def kv_table(data: dict[str, Any] | None, order: Iterable[str] = (), skip_nested: bool = False) -> Table:
    """Key/value table: `order` first, then the remaining keys sorted (keys added later still show)."""
    data = data or {}
    order = [k for k in order if k in data]
    keys = order + sorted(k for k in data if k not in order)
    if skip_nested:
        keys = [k for k in keys if not isinstance(data[k], (dict, list))]
    return Table(("key", "value"), tuple((Span(k, code=True), value_text(data[k])) for k in keys))


# ---------------------------------------------------------------------------------------------
# summary table


def _tokenizer_cell(row: dict[str, Any]) -> str:
    if row["compatible"] is None:
        return MISSING
    kind = "compatible" if row["compatible"] else "incompatible"
    b, f = row["good_base_pct"], row["good_finetune_pct"]
    if b is None and f is None:
        return kind
    good = pct(b) if b == f or f is None else f"{pct(b)} / {pct(f)}"
    return f"{kind} ({good} good)"


def _cosine_cell(row: dict[str, Any]) -> str:
    if row["cosine_mean"] is None:
        return MISSING
    err = row["cosine_stderr"]
    return num(row["cosine_mean"]) if err is None else f"{num(row['cosine_mean'])} ± {num(err, 2)}"


def _feature_cell(row: dict[str, Any]) -> str:
    mean, frac = row["regular_correlation_mean"], row["regular_fraction_at_least_0.8"]
    if mean is None and frac is None:
        return MISSING
    return f"{num(mean)} ({num(100 * frac if frac is not None else None, 3)} %)"


def expected_text(entry: Entry) -> str:
    exp = entry.expected_verdict
    if exp is None:
        return MISSING
    extrapolated = " (extrapolated)" if (entry.expected or {}).get("extrapolated") else ""
    marker = {True: " ✓", False: " ✗", None: ""}[entry.matches]
    return f"{exp}{extrapolated}{marker}"


def _reasons_cell(entry: Entry) -> str:
    # the headline reason only ("fails: bad on explained variance, KL score"); the per-metric lines
    # with their numbers are in the pair's own section, one link away
    parts = reasons(entry)[:1]
    if entry.skip_reason is not None:
        prefix = "latest run did not evaluate it: " if entry.result is not None else ""
        parts.append(f"{prefix}{entry.skip_reason}")
    return "; ".join(parts) or MISSING


def summary_table(entries: list[Entry]) -> Table:
    rows = []
    for entry in entries:
        row = summary_row(entry)
        rows.append((
            Span(entry.pair_id, href=f"#{anchor(entry)}", code=True), row["sae"] or MISSING,
            Span(row["hook"], code=True) if row["hook"] else MISSING, _tokenizer_cell(row), _cosine_cell(row),
            arrow(row["explained_variance_base"], row["explained_variance_finetune"]) if entry.result else MISSING,
            arrow(row["kl_div_score_base"], row["kl_div_score_finetune"]) if entry.result else MISSING,
            arrow(row["ce_loss_score_base"], row["ce_loss_score_finetune"]) if entry.result else MISSING,
            num(row["l0_ratio"]), _feature_cell(row), row["verdict"] or MISSING, expected_text(entry),
            _reasons_cell(entry),
        ))
    return Table(SUMMARY_HEADERS, tuple(rows))


# ---------------------------------------------------------------------------------------------
# how to read


def how_to_read(caveat: str) -> list[Block]:
    return [
        Heading(2, "How to read this report", "how-to-read"),
        Para(("Verdict rules, one row per field of ", Span("saetransfer.verdict.Thresholds", code=True),
              " with its current value; the order of the rules and what happens to a missing metric are in ",
              Span("saetransfer/verdict.py", code=True), "'s docstring:")),
        rules_table(),
        Bullets((
            "activation cosine: per-token cosine of base vs finetune residual activations at the SAE hook on "
            "identical token ids, mean over kept positions (BOS/special tokens and norm outliers masked) ± standard "
            "error over rows.",
            "explained variance (SAELens definition), KL score (KL_abl − KL_sae) / KL_abl and CE recovered: the base "
            "SAE on the base model → on the finetune. CE recovered can exceed 1 on a finetune because splicing pulls "
            "the activations back toward the base model; the KL score measures faithfulness to the finetune's own "
            "logits.",
            "L0 ratio: L0 of the base SAE on the finetune over its L0 on the base.",
            "regular-feature corr: per-latent Pearson r of base vs finetune activations for latents with log10 "
            "density in [−5, −1] in both models; in brackets the percentage of them with r ≥ 0.8 (the post: ~10 % "
            "for Gemma-2b).",
            "expected: the verdict a published source reports for the pair (✓ matches, ✗ differs); "
            "'not run' rows are pairs the latest run could not evaluate, with the reason.",
            f"{num(math.nan)} means undefined (NaN, e.g. a ratio whose baseline equals clean); "
            f"{MISSING} means not computed.",
            "Decoded text shows control characters as Unicode control pictures (␊ newline, ␉ tab).",
        )),
        Para(("Caveat on logit similarity (the post, §5.2): ", caveat)),
    ]


# ---------------------------------------------------------------------------------------------
# per pair


def _sae_table(sae: dict[str, dict[str, Any]]) -> Table:
    names = [k for k in SAE_LABELS if isinstance(sae.get(k), dict)] + sorted(k for k in sae if k not in SAE_LABELS)
    known = dict(SAE_METRICS)
    extra = sorted({k for n in names for k, v in sae[n].items()
                    if k not in known and not isinstance(v, (dict, list))})
    rows = tuple((label if key in known else Span(key, code=True), *(num(sae[n].get(key)) for n in names))
                 for key, label in [*SAE_METRICS, *((k, k) for k in extra)])
    return Table(("metric", *(SAE_LABELS.get(n, n) for n in names)), rows)


def _sae_flags(sae: dict[str, dict[str, Any]]) -> list[Block]:
    items = tuple(f"{SAE_LABELS.get(n, n)}: {flag}" for n in sorted(sae) for flag in (sae[n].get("flags") or []))
    return [Para("Flags:"), Bullets(items)] if items else []


def _bucket_table(buckets: dict[str, Any]) -> Table:
    names = [b for b in BUCKET_ORDER if b in buckets] + sorted(b for b in buckets if b not in BUCKET_ORDER)
    rows = []
    for name in names:
        b = buckets[name] if isinstance(buckets[name], dict) else {}
        act = b.get("activation_correlation") or {}
        ids = b.get("latent_ids")
        rows.append((name, f"{num(len(ids)) if isinstance(ids, list) else MISSING} / {num(b.get('n_total'))}",
                     num(act.get("mean")), num(act.get("median")), num(act.get("fraction_at_least_0.8")),
                     num(act.get("n_nan")), num(b.get("activation_error_mean")), num(b.get("activation_error_max")),
                     num(b.get("other_model_max_activation")), num(get(b, "logit_correlation", "mean"))))
    return Table(("bucket", "sampled / total", "activation r mean", "median", "fraction r ≥ 0.8", "NaN r",
                  "log-activation error mean", "max", "other model's max activation", "logit r mean"), tuple(rows))


def _worst_tokens(worst: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for key, title, score in WORST:
        items = [i for i in (worst.get(key) or []) if isinstance(i, dict)][:WORST_SHOWN]
        if not items:
            continue
        rows = tuple((num(rank), num(i.get("score")), Span(str(i.get("context", "")), code=True),
                      Span(str(i.get("token", "")), code=True), Span(str(i.get("next", "")), code=True),
                      f"{num(i.get('row'))}:{num(i.get('position'))}") for rank, i in enumerate(items, 1))
        blocks += [Para(f"{title[0].upper()}{title[1:]}:"),
                   Table(("#", score, "context before", "token", "next", "row:position"), rows)]
    return blocks


def _images(plots: dict[str, tuple[str, Plot]], *names: str) -> list[Block]:
    return [Image(plots[n][0], plots[n][1].alt, plots[n][1].png) for n in names if n in plots]


def _verdict_blocks(entry: Entry) -> list[Block]:
    exp = entry.expected or {}
    where: tuple[str | Span, ...] = ()
    if entry.sae or entry.hook:
        where = (f" · SAE {entry.sae or MISSING} at ", Span(entry.hook or MISSING, code=True))
    blocks: list[Block] = [Para(("Pair ", Span(entry.pair_id, code=True), *where))]
    if entry.result is not None:
        blocks.append(Para(f"Verdict: {entry.verdict or MISSING}. Expected: {expected_text(entry)}"
                           + (f" (source: {exp['source']})" if exp.get("source") else "") + "."))
        if items := reasons(entry):
            blocks.append(Bullets(tuple(items)))
        if extra := {k: v for k, v in entry.result.verdict.items() if k not in ("verdict", "reasons")}:
            blocks.append(kv_table(extra))  # whatever else saetransfer.verdict reports (grades, thresholds…)
    if entry.skip_reason is not None:
        earlier = " The numbers below are from an earlier run's record." if entry.result is not None else ""
        blocks.append(Para(f"Not run in the latest run: {entry.skip_reason}.{earlier}"))
    if entry.outcomes:
        rows = tuple((Span(name, code=True), o["outcome"], o["reason"] or MISSING)
                     for name, o in sorted(entry.outcomes.items()))
        blocks.append(Table(("finding", "outcome", "reason"), rows))
    return blocks


def pair_section(entry: Entry, plots: dict[str, tuple[str, Plot]]) -> list[Block]:
    """Everything about one test id; sections the record lacks (an incompatible pair) are left out."""
    blocks: list[Block] = [Heading(3, entry.test_id, anchor(entry)), *_verdict_blocks(entry)]
    r = entry.result
    if r is None:
        return blocks
    blocks += [Heading(4, "Tokenizers"), kv_table(r.tokenizer), kv_table(r.compatibility)]
    if r.similarity is not None:
        blocks += [Heading(4, "Activation similarity"), *_images(plots, "activation_similarity", "per_position"),
                   kv_table(r.similarity, SIMILARITY_ORDER, skip_nested=True),
                   Para("Masking (left out of every statistic, kept clean in the spliced pass):"),
                   kv_table(r.masking, MASKING_ORDER)]
    if r.sae:
        blocks += [Heading(4, "SAE quality"), _sae_table(r.sae), *_sae_flags(r.sae),
                   *_images(plots, "density_histograms", "density_scatter"),
                   Para("log10-density correlation base vs finetune: "
                        f"{num(get(r.density, 'log10_density_correlation'))}")]
    if r.features is not None:
        blocks += [Heading(4, "Feature transfer by density bucket"), _bucket_table(r.features.get("buckets") or {}),
                   kv_table({k: v for k, v in r.features.items() if k not in ("buckets", "caveat")}),
                   *_images(plots, "feature_correlations"),
                   Para(("Caveat: ", str(r.features.get("caveat") or CAVEAT_FALLBACK)))]
    if r.worst_tokens:
        blocks += [Heading(4, "Where transfer breaks"), *_worst_tokens(r.worst_tokens)]
    return blocks + [Heading(4, "Provenance"), kv_table(r.provenance, PROVENANCE_ORDER)]


def document(entries: list[Entry], plots: dict[str, dict[str, tuple[str, Plot]]], warnings: list[str],
             records_label: str) -> list[Block]:
    """The whole report. A record that cannot be rendered gets a stub section and a line in `warnings`."""
    n_run = sum(e.result is not None for e in entries)
    caveat = next((str(e.result.features["caveat"]) for e in entries
                   if e.result is not None and e.result.features and e.result.features.get("caveat")), CAVEAT_FALLBACK)
    blocks: list[Block] = [
        Heading(1, TITLE),
        Para(("Does a sparse autoencoder trained on a base model still work on its finetune? Rendered from every "
              f"record in {records_label}/ ({n_run} evaluated, {len(entries) - n_run} not run), so a partial run "
              "(pytest -k …) adds or updates rows and never drops one. Regenerate rather than edit.")),
    ]
    body: list[Block] = [Heading(2, "Which pairs transfer", "which-pairs-transfer"), summary_table(entries),
                         *how_to_read(caveat), Heading(2, "Pairs", "pairs")]
    for entry in entries:
        try:
            body += pair_section(entry, plots.get(entry.test_id, {}))
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a malformed record, not a crash
            warnings.append(f"section of {entry.test_id} incomplete: {type(exc).__name__}: {exc}")
            body += [Heading(3, entry.test_id, anchor(entry)), Para(f"Could not render this record: {exc}")]
    if warnings:  # after the sections, which may add some
        blocks += [Heading(2, "Warnings", "warnings"), Bullets(tuple(warnings))]
    return blocks + body

