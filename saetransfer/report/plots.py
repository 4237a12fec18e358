"""The post's plots for one pair, drawn with matplotlib's object API (no pyplot state, Agg, no display).

Output is byte-for-byte reproducible: fixed figure size and dpi, the default style (a user's
matplotlibrc cannot leak in) and no PNG metadata (matplotlib writes no date into PNGs; the
'Software' key, which would carry its version, is dropped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from saetransfer.report import fmt
from saetransfer.report.fmt import num, percent
from saetransfer.results import Histogram, PairResult, SaeMetrics

DPI = 100
WIDE = (10.0, 3.8)
SQUARE = (5.0, 4.6)
# fixed margins instead of a layout engine: constrained layout doubled the drawing time
WIDE_MARGINS = {"left": 0.07, "right": 0.985, "bottom": 0.14, "top": 0.91, "wspace": 0.22}
SQUARE_MARGINS = {"left": 0.13, "right": 0.96, "bottom": 0.11, "top": 0.92}
STYLE: dict[str, Any] = {"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 10,
                         "legend.fontsize": 8, "savefig.dpi": DPI, "figure.dpi": DPI}
SAE_LABELS = {"base": "base SAE on base", "finetune": "base SAE on finetune",
              "norm_matched_finetune": "base SAE on norm-matched finetune",
              "native_on_finetune": "finetune SAE on finetune"}
"""`SaeEvaluation` fields in display order, with their column labels."""


@dataclass(frozen=True)
class Plot:
    name: str
    """File stem, e.g. 'activation_similarity'."""
    alt: str
    png: bytes


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def figure(wide: bool) -> Figure:
    fig = Figure(figsize=WIDE if wide else SQUARE)
    fig.subplots_adjust(**(WIDE_MARGINS if wide else SQUARE_MARGINS))
    return fig


def _zoom(ax: Axes, hists: list[Histogram], include: tuple[float, ...] = ()) -> None:
    """x range: the occupied bins (plus `include`), so a narrow distribution is not a sliver at one edge."""
    spans = []
    for hist in hists:
        if any(hist.counts):
            width = (hist.high - hist.low) / len(hist.counts)
            used = [i for i, c in enumerate(hist.counts) if c]
            spans.append((hist.low + used[0] * width, hist.low + (used[-1] + 1) * width))
    if spans:
        low = min([s[0] for s in spans] + list(include))
        high = max([s[1] for s in spans] + list(include))
        pad = 0.05 * (high - low) or 0.05
        ax.set_xlim(low - pad, high + pad)


def _hist(ax: Axes, hist: Histogram, label: str | None = None, fill: bool = True, ls: str = "-") -> bool:
    """Draw a stored histogram; False when it has no counts."""
    if not hist.counts:
        return False
    counts = np.asarray(hist.counts, dtype=float)
    edges = np.linspace(hist.low, hist.high, counts.size + 1)
    ax.stairs(counts, edges, fill=fill, alpha=0.45 if fill else 1.0, label=label, linestyle=ls)
    return True


def _similarity(r: PairResult) -> Figure | None:
    s = r.similarity
    if s is None or not (s.cosine_histogram.counts and s.relative_distance_histogram.counts):
        return None
    fig = figure(wide=True)
    left, right = fig.subplots(1, 2)
    _hist(left, s.cosine_histogram)
    _hist(right, s.relative_distance_histogram)
    _zoom(left, [s.cosine_histogram], (1.0,))
    _zoom(right, [s.relative_distance_histogram], (0.0,))
    left.set(title=f"cosine(base, finetune) per token, mean {num(s.cosine_mean)}",
             xlabel="cosine similarity", ylabel="tokens")
    right.set(title=f"relative distance, mean {num(s.relative_distance_mean)}",
              xlabel="‖a_ft − a_base‖ / ‖a_base‖ (clipped at 2)", ylabel="tokens")
    return fig


def _per_position(r: PairResult) -> Figure | None:
    s = r.similarity
    if s is None or not s.per_position_cosine:
        return None
    fig = figure(wide=True)
    top, bottom = fig.subplots(1, 2)
    cos, dist = s.per_position_cosine, s.per_position_distance
    top.plot(np.arange(len(cos)), np.asarray(cos, dtype=float), lw=1)
    top.set(title="mean cosine by position (all rows, BOS included)", xlabel="position", ylabel="cosine")
    bottom.plot(np.arange(len(dist)), np.asarray(dist, dtype=float), lw=1, color="C1")
    bottom.set(title="mean Euclidean distance by position", xlabel="position", ylabel="‖a_ft − a_base‖")
    return fig


def _sae_sides(r: PairResult) -> list[tuple[str, SaeMetrics]]:
    if r.sae is None:
        return []
    sides = [(name, getattr(r.sae, name)) for name in SAE_LABELS]
    return [(name, side) for name, side in sides if side is not None]


def _density_histograms(r: PairResult) -> Figure | None:
    sides = [(n, s) for n, s in _sae_sides(r) if s.log10_density_histogram.counts]
    if not sides:
        return None
    fig = figure(wide=False)
    ax = fig.subplots()
    # distinct line styles: identical histograms (the identity pair) must not hide one another
    for (name, side), ls in zip(sides, ("-", "--", ":", "-.")):
        _hist(ax, side.log10_density_histogram, SAE_LABELS[name], fill=False, ls=ls)
    ax.set(title="latent density (dead latents at −10)", xlabel="log10(density + 1e-10)", ylabel="latents")
    ax.legend()
    return fig


def _density_scatter(r: PairResult) -> Figure | None:
    d = r.density
    if d is None or not d.base or len(d.base) != len(d.finetune):  # committed records leave them out
        return None
    fig = figure(wide=False)
    ax = fig.subplots()
    ax.scatter(np.asarray(d.base, dtype=float), np.asarray(d.finetune, dtype=float), s=4, alpha=0.35, linewidths=0)
    ax.plot([-10, 0], [-10, 0], color="grey", lw=0.8, ls="--")
    ax.add_patch(Rectangle((-5, -5), 4, 4, fill=False, ec="C2", lw=0.8, label="regular bucket"))
    ax.set(title=f"log10 density, base vs finetune: r = {num(d.log10_density_correlation)}",
           xlabel="base", ylabel="finetune", xlim=(-10.3, 0.3), ylim=(-10.3, 0.3))
    ax.legend(loc="upper left")
    return fig


def _correlations(r: PairResult) -> Figure | None:
    if r.features is None:
        return None
    buckets = r.features.buckets
    act = buckets.regular.activation_correlation
    logit = {f.name: getattr(buckets, f.name).logit_correlation for f in dataclasses.fields(buckets)}
    if not act.histogram.counts and not any(v.histogram.counts for v in logit.values()):
        return None
    fig = figure(wide=True)
    left, right = fig.subplots(1, 2)
    _hist(left, act.histogram)
    _zoom(left, [act.histogram], (0.8, 1.0))
    left.axvline(0.8, color="C3", lw=0.8, ls="--")
    left.set(title=f"regular latents (n = {num(act.n)}): activation r, {percent(act.fraction_transferred)} ≥ 0.8",
             xlabel="Pearson r (base vs finetune activations)", ylabel="latents")
    drawn = [_hist(right, v.histogram, f"{name} (n = {num(v.n)})", fill=False) for name, v in logit.items()]
    _zoom(right, [v.histogram for v in logit.values()], (1.0,))
    right.set(title="logit similarity (shared W_dec: mostly the W_U change)",
              xlabel="r(W_dec·W_U base, W_dec·W_U finetune)", ylabel="latents")
    if any(drawn):
        right.legend(loc="upper left")
    return fig


PLOTS: tuple[tuple[str, str, Callable[[PairResult], Figure | None]], ...] = (
    ("activation_similarity", "cosine and relative-distance histograms of base vs finetune activations", _similarity),
    ("per_position", "cosine and distance by position", _per_position),
    ("density_histograms", "log10 latent density histograms", _density_histograms),
    ("density_scatter", "log10 latent density, base vs finetune", _density_scatter),
    ("feature_correlations", "per-latent activation and logit correlation by bucket", _correlations),
)


def pair_plots(result: PairResult) -> list[Plot]:
    """Every plot the pair's record has data for, in a fixed order."""
    plots = []
    with matplotlib.style.context(["default", STYLE]):
        for name, alt, draw in PLOTS:
            fig = draw(result)
            if fig is not None:
                plots.append(Plot(name, alt, png_bytes(fig)))
    return plots


def inputs_key(result: PairResult) -> str:
    """Changes whenever a plot could: the record, the code that draws it or matplotlib's version."""
    digest = hashlib.sha256(result.to_json().encode("utf-8"))
    for module in (Path(__file__), Path(fmt.__file__)):
        digest.update(module.read_bytes())
    digest.update(matplotlib.__version__.encode("ascii"))
    return digest.hexdigest()
