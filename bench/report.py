"""Results and their presentation: medians, ratios, target checks, text, markdown and JSON.

Everything here is pure (no timing, no files), so ``tests/test_bench.py`` can run it on
made-up numbers and the table code cannot rot between benchmark runs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

MIB = 1024 * 1024
TargetKind = Literal["ratio_max", "seconds_max", "overhead_max", "rss_max_mib", "reads_max"]
HEADER = ("workload", "anchor", "anchor median", "archive median", "vs anchor",
          "MiB/s archive / anchor", "peak RSS", "target", "met")


@dataclass(frozen=True)
class Target:
    """One goal of a row: a limit on its ratio, time, overhead, peak RSS or file reads.

    ``derived`` marks a target that the issue sets for another data set and this benchmark
    applies by analogy, so a reader can tell the issue's own goals from ours.
    """

    kind: TargetKind
    limit: float
    text: str
    derived: bool = False

    def met(self, row: "Row") -> bool | None:
        """True or False once the row has what this target needs; None when it lacks it."""
        value = _measured_value(self.kind, row)
        if value is None:
            return None
        return value <= self.limit if self.kind in ("ratio_max", "reads_max") else value < self.limit


@dataclass(frozen=True)
class Row:
    """One workload measured beside its anchor: raw seconds of every repetition, kept for JSON.

    ``nbytes`` is the data one run moves (0 where throughput means nothing); ``peak_rss_kib``
    the largest peak RSS of the archive's own process over the repetitions (0 if unknown).
    """

    key: str
    workload: str
    anchor: str
    anchor_seconds: tuple[float, ...]
    archive_seconds: tuple[float, ...]
    targets: tuple[Target, ...] = ()
    nbytes: int = 0
    peak_rss_kib: int = 0
    file_reads: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def anchor_median(self) -> float | None:
        return median(self.anchor_seconds)

    @property
    def archive_median(self) -> float | None:
        return median(self.archive_seconds)

    @property
    def ratio(self) -> float | None:
        """Archive time over anchor time (lower is better); None without both."""
        return ratio(self.archive_median, self.anchor_median)

    @property
    def overhead_seconds(self) -> float | None:
        """Archive time minus anchor time, for start-up rows where a ratio misleads."""
        if self.archive_median is None or self.anchor_median is None:
            return None
        return self.archive_median - self.anchor_median

    @property
    def peak_rss_mib(self) -> float | None:
        return self.peak_rss_kib / 1024 if self.peak_rss_kib else None

    def met(self) -> bool | None:
        """All targets met (True), any missed (False), or nothing to check (None)."""
        results = [target.met(self) for target in self.targets]
        if not results or None in results:
            return None
        return all(results)


def median(samples: Sequence[float]) -> float | None:
    """The median of ``samples``, or None for none (a workload that has no anchor)."""
    return statistics.median(samples) if samples else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the anchor took no time."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def throughput_mib_s(nbytes: int, seconds: float | None) -> float | None:
    """MiB per second, or None where the row moves no data or was not measured."""
    if not nbytes or seconds is None or seconds <= 0:
        return None
    return nbytes / MIB / seconds


def _measured_value(kind: TargetKind, row: Row) -> float | None:
    if kind == "ratio_max":
        return row.ratio
    if kind == "seconds_max":
        return row.archive_median
    if kind == "overhead_max":
        return row.overhead_seconds
    if kind == "rss_max_mib":
        return row.peak_rss_mib
    return None if row.file_reads is None else float(row.file_reads)


def format_seconds(seconds: float | None) -> str:
    """``812 ms`` below a second, ``3.41 s`` above; ``-`` when not measured.

    >>> format_seconds(0.8123), format_seconds(3.414), format_seconds(None)
    ('812 ms', '3.41 s', '-')
    """
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_comparison(row: Row) -> str:
    """The ratio (``0.83x``), or the added time (``+95 ms``) for rows judged by overhead."""
    if any(t.kind == "overhead_max" for t in row.targets):
        overhead = row.overhead_seconds
        return "-" if overhead is None else f"{overhead * 1000:+.0f} ms"
    value = row.ratio
    return "-" if value is None else f"{value:.3g}x"


def format_throughput(row: Row) -> str:
    archive = throughput_mib_s(row.nbytes, row.archive_median)
    anchor = throughput_mib_s(row.nbytes, row.anchor_median)
    if archive is None:
        return "-"
    return f"{archive:.0f} / {anchor:.0f}" if anchor is not None else f"{archive:.0f}"


def format_met(row: Row) -> str:
    return {True: "met", False: "NOT met", None: "-"}[row.met()]


def format_target(row: Row) -> str:
    text = " and ".join(t.text for t in row.targets) or "-"
    return text + ("*" if any(t.derived for t in row.targets) else "")


def table_cells(rows: Iterable[Row]) -> list[tuple[str, ...]]:
    """One tuple of display strings per row, in :data:`HEADER` order."""
    cells = []
    for row in rows:
        rss = row.peak_rss_mib
        cells.append((row.workload, row.anchor or "-", format_seconds(row.anchor_median),
                      format_seconds(row.archive_median), format_comparison(row), format_throughput(row),
                      "-" if rss is None else f"{rss:.0f} MiB", format_target(row), format_met(row)))
    return cells


def render_text(rows: Sequence[Row]) -> str:
    """The table with aligned columns, for a terminal."""
    lines = [HEADER, *table_cells(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def render_markdown(rows: Sequence[Row]) -> str:
    """The table as GitHub markdown (``|`` inside cells escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    out = [line(HEADER), line(["---"] * len(HEADER))]
    out += [line(cells) for cells in table_cells(rows)]
    return "\n".join(out)


def summary(rows: Sequence[Row]) -> dict[str, list[str]]:
    """The workloads whose targets are met, missed, or could not be judged."""
    groups: dict[str, list[str]] = {"met": [], "not met": [], "unchecked": []}
    for row in rows:
        if row.targets:
            groups[{True: "met", False: "not met", None: "unchecked"}[row.met()]].append(row.workload)
    return groups


def to_json(rows: Sequence[Row], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, raw samples included, so a later run can be compared in detail."""
    return {
        "meta": meta,
        "rows": [{
            "key": row.key, "workload": row.workload, "anchor": row.anchor,
            "anchor_seconds": list(row.anchor_seconds), "archive_seconds": list(row.archive_seconds),
            "anchor_median": row.anchor_median, "archive_median": row.archive_median,
            "ratio": row.ratio, "overhead_seconds": row.overhead_seconds, "nbytes": row.nbytes,
            "peak_rss_mib": row.peak_rss_mib, "file_reads": row.file_reads,
            "targets": [{"kind": t.kind, "limit": t.limit, "text": t.text, "derived": t.derived,
                         "met": t.met(row)} for t in row.targets],
            "met": row.met(), "notes": list(row.notes),
        } for row in rows],
        "summary": summary(rows),
    }


def rows_from_json(document: dict[str, Any]) -> list[Row]:
    """The rows of a :func:`to_json` document, to draw a table or plot again without rerunning."""
    rows = []
    for item in document["rows"]:
        targets = tuple(Target(t["kind"], t["limit"], t["text"], t["derived"]) for t in item["targets"])
        rss = item["peak_rss_mib"]
        rows.append(Row(item["key"], item["workload"], item["anchor"], tuple(item["anchor_seconds"]),
                        tuple(item["archive_seconds"]), targets, item["nbytes"],
                        round(rss * 1024) if rss else 0, item["file_reads"], tuple(item["notes"])))
    return rows
