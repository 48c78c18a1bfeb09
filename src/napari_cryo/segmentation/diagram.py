"""A small drawing of the interaction graph (matplotlib, no Qt).

Models are discs in their feature colour around a circle; an arrow runs
from parent to child, green and solid for colocalization, red and dashed
for avoidance, labelled with the radius.  Emitting models have a thick
black outline and absorbing ones a dotted outline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .interactions import InteractionGraph

_KIND_STYLE = {"colocalize": ("#1b9e48", "-"), "avoid": ("#d62728", "--")}


def graph_figure(titles: Sequence[str], graph: InteractionGraph, colours: Mapping[str, str] | None = None, figure=None):
    """Draw the graph on a (new or given) matplotlib Figure and return it."""
    if figure is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 2.6), dpi=90)
    figure.clear()
    ax = figure.add_subplot(111)
    ax.set_axis_off()
    ax.set_aspect("equal")
    titles = list(titles)
    if not titles:
        ax.text(0.5, 0.5, "no models yet", ha="center", va="center", color="0.5", transform=ax.transAxes)
        return figure
    angles = np.pi / 2 - 2 * np.pi * np.arange(len(titles)) / len(titles)
    pos = {t: (np.cos(a), np.sin(a)) if len(titles) > 1 else (0.0, 0.0) for t, a in zip(titles, angles)}
    for edge in graph.interactions:
        if edge.parent not in pos or edge.child not in pos:
            continue
        colour, style = _KIND_STYLE.get(edge.kind, ("0.3", "-"))
        (x0, y0), (x1, y1) = pos[edge.parent], pos[edge.child]
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0),
            arrowprops=dict(arrowstyle="-|>", color=colour, linestyle=style, lw=1.6, shrinkA=16, shrinkB=16, connectionstyle="arc3,rad=0.12"),
        )
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"{edge.kind[:5]} {edge.radius_nm:g} nm", fontsize=7, color=colour, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    for t, (x, y) in pos.items():
        face = (colours or {}).get(t, "#cccccc")
        outline = dict(lw=3.0, ls="-") if t in graph.emit else dict(lw=1.5, ls=":") if t in graph.absorb else dict(lw=1.0, ls="-")
        ax.scatter([x], [y], s=700, c=[face], edgecolors="black", linewidths=outline["lw"], linestyles=outline["ls"], zorder=3)
        tag = " (emit)" if t in graph.emit else " (absorb)" if t in graph.absorb else ""
        ax.text(x, y - 0.3, t + tag, ha="center", va="top", fontsize=8, zorder=4)
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.4)
    figure.tight_layout()
    return figure
