"""The plot of docs/performance.md: each workload's throughput beside its anchor's.

matplotlib is an optional extra (``pip install -e '.[bench]'``) imported only here and only
when a plot is asked for, so the benchmark itself runs without it and just says it skipped
the plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .report import Row, throughput_mib_s

ARCHIVE_COLOR = "#1f77b4"
ANCHOR_COLOR = "#bbbbbb"


def plot_rows(rows: Sequence[Row], path: Path, title: str) -> str | None:
    """Write the PNG to ``path``; return None, or a note saying why no plot was written."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot written"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(panel_rows, value, label) for panel_rows, value, label in (
        ([r for r in rows if r.nbytes and r.archive_median], lambda r, s: throughput_mib_s(r.nbytes, s),
         "MiB/s (log scale, higher is better)"),
        ([r for r in rows if not r.nbytes and r.archive_median], lambda r, s: None if s is None else s * 1000,
         "ms (lower is better)"),
    ) if panel_rows]
    if not panels:
        return "no timed rows: no plot written"
    height = 0.45 * max(max(len(p[0]) for p in panels), 4) + 1.6
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), height), squeeze=False,
                                gridspec_kw={"width_ratios": [3, 2][: len(panels)]})
    for ax, (panel_rows, value, label) in zip(axes[0], panels):
        _bars(ax, panel_rows, value, label)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return None


def _bars(axes, rows: Sequence[Row], value, label: str) -> None:
    """Horizontal bar pairs, the archive above its anchor, one pair per row."""
    positions = range(len(rows))
    archive = [value(r, r.archive_median) or math.nan for r in rows]
    anchor = [value(r, r.anchor_median) or math.nan for r in rows]
    axes.barh([p - 0.2 for p in positions], archive, height=0.4, color=ARCHIVE_COLOR, label="archive")
    axes.barh([p + 0.2 for p in positions], anchor, height=0.4, color=ANCHOR_COLOR, label="anchor")
    axes.set_yticks(list(positions), [_short(r.workload) for r in rows], fontsize=7)
    axes.invert_yaxis()
    if "log" in label:
        axes.set_xscale("log")
        axes.set_xlim(left=1)
    axes.set_xlabel(label, fontsize=8)
    axes.tick_params(axis="x", labelsize=7)
    axes.legend(fontsize=7, loc="lower right")


def _short(text: str, width: int = 50) -> str:
    """Cut the middle of a long label: its end tells rows apart (", --link hard")."""
    if len(text) <= width:
        return text
    keep = (width - 1) // 2
    return text[:keep] + "…" + text[len(text) - keep:]
