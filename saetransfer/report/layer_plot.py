"""One pair's headline metrics against the layer of the hook: a line per evaluation group with ≥ 2 layers.

A group is a (direction, dataset, SAE architecture): e.g. the ReLU SAEs at blocks.1, .2 and .3, base ->
finetune on prose. Each point is the `Comparisons` estimate with its bootstrap interval as the error bar.
Where a group has two evaluations at one layer (two SAEs of one architecture there), the first in
registry order is drawn.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import matplotlib
import matplotlib.style
from matplotlib.figure import Figure

from saetransfer.report import fmt, plots
from saetransfer.report.headline import HEADLINE_METRICS
from saetransfer.report.plots import STYLE, Plot, png_bytes
from saetransfer.report.records import Entry
from saetransfer.results import Estimate

NAME = "across_layers"
ALT = ("EV ratio, KL drop, CE drop and activation cosine against the hook's layer, one line per direction, "
       "dataset and SAE architecture")
LAYER_METRICS = ("ev_ratio", "kl_score_drop", "ce_score_drop", "cosine")
"""`Comparisons` fields drawn, one panel each (labels: `headline.HEADLINE_METRICS`)."""
SIZE = (10.0, 6.4)
MARGINS = {"left": 0.07, "right": 0.985, "bottom": 0.08, "top": 0.9, "wspace": 0.18, "hspace": 0.34}
Group = tuple[str, str, str]
"""(direction, dataset, SAE architecture)."""


def group_label(group: Group) -> str:
    direction, dataset, architecture = group
    return f"{fmt.direction(direction)}, {dataset}, {architecture} SAE"


def layer_groups(entries: list[Entry]) -> dict[Group, list[tuple[int, Entry]]]:
    """One pair's evaluated entries by group, each sorted by layer; only groups with ≥ 2 layers."""
    groups: dict[Group, dict[int, Entry]] = {}
    for e in sorted(entries, key=lambda e: e.order):
        if e.result is None or e.result.comparisons is None or e.layer is None:
            continue
        key = (e.direction, e.dataset or fmt.MISSING, e.sae_architecture or fmt.MISSING)
        groups.setdefault(key, {}).setdefault(e.layer, e)
    return {k: sorted(v.items()) for k, v in sorted(groups.items()) if len(v) >= 2}


def _estimate(e: Entry, metric: str) -> Estimate | None:
    assert e.result is not None and e.result.comparisons is not None
    return getattr(e.result.comparisons, metric)


def _points(entries: list[Entry]) -> dict[str, dict[str, list[tuple[int, dict[str, float] | None]]]]:
    """What the figure shows, as plain data: group label -> metric -> (layer, estimate or None)."""
    return {group_label(g): {m: [(layer, None if (est := _estimate(e, m)) is None else asdict(est))
                                 for layer, e in members] for m in LAYER_METRICS}
            for g, members in layer_groups(entries).items()}


def layer_plot(entries: list[Entry]) -> Plot | None:
    """None when no group of this pair has two layers."""
    points = _points(entries)
    if not points:
        return None
    labels = dict(HEADLINE_METRICS)
    with matplotlib.style.context(["default", STYLE]):
        fig = Figure(figsize=SIZE)
        fig.subplots_adjust(**MARGINS)
        axes = fig.subplots(2, 2).flatten()
        layers = sorted({layer for by_metric in points.values() for series in by_metric.values()
                         for layer, _ in series})
        for ax, metric in zip(axes, LAYER_METRICS):
            for i, (label, by_metric) in enumerate(points.items()):
                shift = (i - (len(points) - 1) / 2) * 0.05  # overlapping error bars stay apart
                xs, ys, below, above = [], [], [], []
                for layer, est in by_metric[metric]:
                    if est is None or not math.isfinite(est["value"]):
                        continue
                    xs.append(layer + shift)
                    ys.append(est["value"])
                    below.append(max(est["value"] - est["low"], 0.0) if math.isfinite(est["low"]) else 0.0)
                    above.append(max(est["high"] - est["value"], 0.0) if math.isfinite(est["high"]) else 0.0)
                ax.errorbar(xs, ys, yerr=[below, above], marker="o", ms=4, lw=1.2, capsize=3, label=label,
                            color=f"C{i % 10}")
            ax.set_xticks(layers, [f"blocks.{layer}" for layer in layers])
            ax.set(title=f"{labels[metric]} by layer", xlabel="hook layer", ylabel=labels[metric])
            ax.margins(x=0.1)
        axes[0].legend(loc="best")
        fig.suptitle("headline metrics against the hook's layer (95 % bootstrap intervals)", fontsize=10, y=0.985)
        return Plot(NAME, ALT, png_bytes(fig))


def layer_inputs_key(entries: list[Entry]) -> str:
    """Changes whenever the figure could: its points, the code that draws it or matplotlib's version."""
    digest = hashlib.sha256(json.dumps(_points(entries), sort_keys=True).encode("utf-8"))
    for module in (Path(__file__), Path(plots.__file__), Path(fmt.__file__)):
        digest.update(module.read_bytes())
    digest.update(matplotlib.__version__.encode("ascii"))
    return digest.hexdigest()
