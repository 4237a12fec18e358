"""Write README.md, report.html, summary.csv and the plots from every record on disk."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from saetransfer.files import write_atomic
from saetransfer.report import layer_plot as layers
from saetransfer.report.axes import by_pair
from saetransfer.report.cross_pair import cross_pair_plot
from saetransfer.report.doc import to_html, to_markdown
from saetransfer.report.fmt import MISSING, slug
from saetransfer.report.headline import anchor, primaries, ran_first
from saetransfer.report.plots import PLOTS, Plot, inputs_key, pair_plots
from saetransfer.report.records import Entry, load_entries
from saetransfer.report.sections import TITLE, document
from saetransfer.report.summary import NOT_RUN, summary_row
from saetransfer.results import PairResult

PLOTS_DIR = "plots"
PLOT_STAMP = "inputs.sha256"
"""Per folder: the inputs' hash and the plots drawn from them, so unchanged pairs are not redrawn."""
CSV_FLOAT_FORMAT = "%.6g"
"""Six significant digits: precise enough for scripts, stable enough not to churn on float noise."""


@dataclass(frozen=True)
class ReportFiles:
    """What `render_report` wrote (paths under its `out_dir`) and the warnings it also put in the report."""

    readme: Path
    html: Path
    csv: Path
    plots: tuple[Path, ...]
    warnings: tuple[str, ...] = ()


def _cached(folder: Path, key: str, alts: dict[str, str], draw: Callable[[], list[Plot]]) -> list[Plot]:
    """`draw()`'s plots, redrawn only when `key` changed (drawing dominates a render's time)."""
    stamp = folder / PLOT_STAMP
    lines = stamp.read_text(encoding="utf-8").splitlines() if stamp.is_file() else []
    names = lines[1:]
    if lines and lines[0] == key and all(n in alts and (folder / f"{n}.png").is_file() for n in names):
        return [Plot(n, alts[n], (folder / f"{n}.png").read_bytes()) for n in names]
    plots = draw()
    if not plots:  # nothing to draw (an incompatible pair): no folder at all
        return plots
    for plot in plots:
        write_atomic(folder / f"{plot.name}.png", plot.png)
    write_atomic(stamp, "".join(f"{line}\n" for line in [key, *(p.name for p in plots)]).encode("utf-8"))
    return plots


def _cached_plots(result: PairResult, folder: Path) -> list[Plot]:
    """An evaluation's plots (`plots.PLOTS`), keyed by `inputs_key`."""
    return _cached(folder, inputs_key(result), {name: alt for name, alt, _ in PLOTS}, lambda: pair_plots(result))


def _cached_layer_plot(entries: list[Entry], folder: Path) -> list[Plot]:
    """A pair's metrics against the layer (`layer_plot`), keyed by `layer_inputs_key`."""
    def draw() -> list[Plot]:
        plot = layers.layer_plot(entries)
        return [] if plot is None else [plot]

    return _cached(folder, layers.layer_inputs_key(entries), {layers.NAME: layers.ALT}, draw)


def _write_plots(entries: list[Entry], out_dir: Path, cross_pair: Plot | None, warnings: list[str]
                 ) -> tuple[dict[str, dict[str, tuple[str, Plot]]], dict[str, tuple[str, Plot]]]:
    """PNG files under plots/<test id slug>/ (primary evaluations only), plots/<pair id slug>/ (a pair's
    metrics against the layer) and plots/cross_pair.png; stale ones (a removed record, a plot no longer
    drawn) deleted. Returns the evaluations' plots by test id and the layer plots by pair id."""
    root = out_dir / PLOTS_DIR
    written: dict[str, dict[str, tuple[str, Plot]]] = {}
    keep: set[Path] = set()
    if cross_pair is not None:
        keep.add(root / f"{cross_pair.name}.png")
        write_atomic(root / f"{cross_pair.name}.png", cross_pair.png)
    by_layer: dict[str, tuple[str, Plot]] = {}
    for pair_id, members in by_pair(entries).items():
        if not layers.layer_groups(members):
            continue
        # a pair id never names a test id's folder: a test id adds the SAE and the hook (which has "_")
        folder = slug(pair_id)
        try:
            drawn = _cached_layer_plot(members, root / folder)
        except (TypeError, ValueError) as exc:
            warnings.append(f"no layer plot for {pair_id}: {type(exc).__name__}: {exc}")
            continue
        if drawn:
            keep.update({root / folder / PLOT_STAMP, root / folder / f"{drawn[0].name}.png"})
            by_layer[pair_id] = (f"{PLOTS_DIR}/{folder}/{drawn[0].name}.png", drawn[0])
    for entry in primaries(entries):  # further evaluations get no plots: the report stays small and quick
        if entry.result is None or not entry.result.comparable:  # nothing past the tokenizer check to draw
            continue
        folder = anchor(entry).removeprefix("pair-")
        keep.add(root / folder / PLOT_STAMP)
        try:
            plots = _cached_plots(entry.result, root / folder)
        except (TypeError, ValueError) as exc:  # a malformed value in one record must not sink the report
            warnings.append(f"no plots for {entry.test_id}: {type(exc).__name__}: {exc}")
            continue
        for plot in plots:
            keep.add(root / folder / f"{plot.name}.png")
            written.setdefault(entry.test_id, {})[plot.name] = (f"{PLOTS_DIR}/{folder}/{plot.name}.png", plot)
    _prune(root, keep)
    return written, by_layer


def _prune(root: Path, keep: set[Path]) -> None:
    if not root.is_dir():
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path not in keep:
            path.unlink()
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            shutil.rmtree(folder)


def _csv(entries: list[Entry]) -> bytes:
    rows = [summary_row(e) for e in ran_first(entries)]
    frame = pd.DataFrame(rows, columns=list(summary_row(Entry("", "")).keys()))
    return frame.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n").encode("utf-8")


def render_report(records_dir: Path, out_dir: Path) -> ReportFiles:
    """Render the report from all records in `records_dir` into `out_dir`.

    Inputs: `records_dir/*.json` (a `PairResult.to_json()` plus optional "outcomes", "expected", "claims")
    and `records_dir/skipped/*.json` ({"test_id", "pair_id", "reason"}). Unreadable files become
    warnings in the report. Output is deterministic: rendering unchanged records rewrites nothing.
    """
    records_dir, out_dir = Path(records_dir), Path(out_dir)
    entries, warnings = load_entries(records_dir)
    cross_pair = cross_pair_plot(primaries(entries))
    plots, layer_plots = _write_plots(entries, out_dir, cross_pair, warnings)
    blocks = document(entries, plots, cross_pair, warnings, records_dir.name, layer_plots)
    drawn = [out_dir / rel for p in plots.values() for rel, _ in p.values()]
    drawn += [out_dir / rel for rel, _ in layer_plots.values()]
    if cross_pair is not None:
        drawn.append(out_dir / PLOTS_DIR / f"{cross_pair.name}.png")
    files = ReportFiles(readme=out_dir / "README.md", html=out_dir / "report.html", csv=out_dir / "summary.csv",
                        plots=tuple(sorted(drawn)),
                        warnings=tuple(warnings))
    write_atomic(files.readme, to_markdown(blocks).encode("utf-8"))
    write_atomic(files.html, to_html(blocks, TITLE).encode("utf-8"))
    write_atomic(files.csv, _csv(entries))
    return files


def verdict_table(records_dir: Path) -> str:
    """Plain-text table (test id, verdict, norm-matched verdict, expected, match) for pytest's terminal summary."""
    entries, warnings = load_entries(Path(records_dir))
    header = ("test id", "verdict", "norm-matched", "expected", "match")
    rows = [(e.test_id, e.verdict or NOT_RUN, e.norm_matched_verdict or MISSING, e.expected_verdict or MISSING,
             {True: "ok", False: "MISMATCH", None: MISSING}[e.matches]) for e in ran_first(entries)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)
