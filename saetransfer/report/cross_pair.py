"""The answer across pairs in one figure: activation cosine against the EV ratio and against the KL score.

Points are coloured by verdict; the interpolation ladder (finetunes interpolated from the base at
strengths alpha, with both ends when they are pairs too) is drawn as a line in alpha order.
"""

from __future__ import annotations

import re

import matplotlib.style
import numpy as np

from saetransfer.report.fmt import VERDICT_COLOURS
from saetransfer.report.plots import STYLE, Plot, figure, png_bytes
from saetransfer.report.records import Entry

NAME = "cross_pair"
ALT = "activation cosine against the EV ratio and the KL score on the finetune, one point per pair, by verdict"
_INTERPOLATED = re.compile(r"^(?P<start>.+) \+ (?P<alpha>[0-9.]+) x \((?P<end>.+) - it\)$")
"""How `registry.ModelSource.display` writes an interpolated finetune."""


def ladder(entries: list[Entry]) -> list[tuple[float, Entry]]:
    """(alpha, entry) along the longest interpolation ladder, both ends included when they are pairs."""
    rungs: dict[tuple[str, str], list[tuple[float, Entry]]] = {}
    for e in entries:
        if e.result is not None and (m := _INTERPOLATED.match(e.result.provenance.finetune)):
            rungs.setdefault((m["start"], m["end"]), []).append((float(m["alpha"]), e))
    if not rungs:
        return []
    (start, end), steps = max(rungs.items(), key=lambda kv: (len(kv[1]), kv[0]))
    for e in entries:
        p = e.result.provenance if e.result is not None else None
        if p is not None and p.finetune in (start, end) and p.base == start:
            steps.append((0.0 if p.finetune == start else 1.0, e))
    return sorted(steps, key=lambda step: (step[0], step[1].test_id))


def _point(e: Entry) -> tuple[float, float, float] | None:
    r = e.result
    if r is None or r.comparisons is None or r.sae is None:
        return None
    ev, cos = r.comparisons.ev_ratio, r.comparisons.cosine
    if ev is None or cos is None:
        return None
    return cos.value, ev.value, r.sae.finetune.kl_div_score


def cross_pair_plot(entries: list[Entry]) -> Plot | None:
    """None when fewer than two pairs have the numbers (one point answers nothing across pairs)."""
    points = [(e, p) for e in entries if (p := _point(e)) is not None]
    if len(points) < 2:
        return None
    steps = [(alpha, p) for alpha, e in ladder(entries) if (p := _point(e)) is not None]
    with matplotlib.style.context(["default", STYLE]):
        fig = figure(wide=True)
        for ax, index, label in zip(fig.subplots(1, 2), (1, 2), ("EV ratio finetune / base", "KL score on the finetune")):
            if len(steps) > 1:
                xs, ys = np.array([p[0] for _, p in steps]), np.array([p[index] for _, p in steps])
                ax.plot(xs, ys, color="grey", lw=1, zorder=1, label="interpolation ladder")
                for (alpha, p) in steps:
                    ax.annotate(f"α={alpha:g}", (p[0], p[index]), textcoords="offset points", xytext=(4, -10),
                                fontsize=7, color="grey")
            for verdict in VERDICT_COLOURS:
                mine = [p for e, p in points if e.verdict == verdict]
                if mine:
                    ax.scatter([p[0] for p in mine], [p[index] for p in mine], s=36, color=VERDICT_COLOURS[verdict],
                               label=verdict, zorder=2, edgecolors="white", linewidths=0.5)
            on_ladder = {e.test_id for _, e in ladder(entries)}
            for e, p in points:  # name the points the ladder's α labels do not
                if e.test_id not in on_ladder:
                    ax.annotate(e.pair_id.split("__")[-1], (p[0], p[index]), textcoords="offset points",
                                xytext=(-4, 6), ha="right", fontsize=7)
            ax.margins(x=0.08, y=0.08)
            ax.set(xlabel="activation cosine base vs finetune (mean)", ylabel=label,
                   title=f"activation cosine vs {label}")
        fig.axes[0].legend(loc="best")
        return Plot(NAME, ALT, png_bytes(fig))
