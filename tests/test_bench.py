"""The benchmark's pure helpers on made-up numbers, so its code cannot rot between runs.

Nothing here times anything: speed targets live in ``python -m bench.run``, never in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import datasets, report
from bench.measure import parse_time_rss, run_timed
from bench.report import Row, Target


def make_row(anchor: tuple[float, ...] = (2.0, 1.0, 3.0), measured: tuple[float, ...] = (1.0, 1.5, 1.2),
             targets: tuple[Target, ...] = (Target("ratio_max", 1.0, "<= 1.0x"),), **extra) -> Row:
    return Row("push", "push 1 GiB", "openssl + cp", anchor, measured, targets, **extra)


def test_medians_and_ratio() -> None:
    row = make_row()
    assert (row.anchor_median, row.archive_median) == (2.0, 1.2)
    assert row.ratio == pytest.approx(0.6)
    assert row.overhead_seconds == pytest.approx(-0.8)


def test_missing_anchor_gives_no_ratio() -> None:
    row = make_row(anchor=())
    assert row.anchor_median is None and row.ratio is None and row.overhead_seconds is None
    assert report.ratio(1.0, 0.0) is None


@pytest.mark.parametrize("target, extra, met", [
    (Target("ratio_max", 0.6, "<= 0.6x"), {}, True),
    (Target("ratio_max", 0.59, "<= 0.59x"), {}, False),
    (Target("seconds_max", 1.2, "< 1.2 s"), {}, False),
    (Target("seconds_max", 1.21, "< 1.21 s"), {}, True),
    (Target("overhead_max", 0.0, "< 0 s over"), {}, True),
    (Target("rss_max_mib", 100, "< 100 MiB"), {"peak_rss_kib": 99 * 1024}, True),
    (Target("rss_max_mib", 100, "< 100 MiB"), {"peak_rss_kib": 100 * 1024}, False),
    (Target("rss_max_mib", 100, "< 100 MiB"), {}, None),
    (Target("reads_max", 5, "<= 5 reads"), {"file_reads": 5}, True),
    (Target("reads_max", 5, "<= 5 reads"), {"file_reads": 10_000}, False),
])
def test_target_check(target: Target, extra: dict, met: bool | None) -> None:
    assert target.met(make_row(targets=(target,), **extra)) is met


def test_row_is_met_only_when_every_target_is() -> None:
    fast = Target("seconds_max", 5.0, "< 5 s")
    reads = Target("reads_max", 3, "<= 3 reads")
    assert make_row(targets=(fast, reads), file_reads=2).met() is True
    assert make_row(targets=(fast, reads), file_reads=4).met() is False
    assert make_row(targets=()).met() is None


def test_formatting() -> None:
    assert report.format_seconds(0.0424) == "42 ms"
    assert report.format_seconds(12.345) == "12.35 s"
    row = make_row(nbytes=1024 * report.MIB)
    assert report.format_comparison(row) == "0.6x"
    assert report.format_throughput(row) == "853 / 512"
    startup = make_row(anchor=(0.040,), measured=(0.135,), targets=(Target("overhead_max", 0.15, "< 150 ms"),))
    assert report.format_comparison(startup) == "+95 ms"
    derived = make_row(targets=(Target("ratio_max", 1.0, "<= 1.0x", derived=True),))
    assert report.format_target(derived) == "<= 1.0x*"


def test_tables_have_one_line_per_row_and_escape_pipes() -> None:
    rows = [make_row(), make_row(measured=(9.0,))]
    text = report.render_text(rows).splitlines()
    assert len(text) == 4 and "NOT met" in text[3] and "met" in text[2]
    markdown = report.render_markdown([Row("k", "a | b", "-", (), (1.0,))]).splitlines()
    assert len(markdown) == 3 and "a \\| b" in markdown[2]


def test_json_keeps_samples_and_summary() -> None:
    rows = [make_row(), make_row(measured=(9.0,), targets=(Target("ratio_max", 1.0, "<= 1.0x"),))]
    document = json.loads(json.dumps(report.to_json(rows, {"mode": "quick"})))
    assert document["rows"][0]["archive_seconds"] == [1.0, 1.5, 1.2]
    assert document["rows"][1]["targets"][0]["met"] is False
    assert document["summary"]["not met"] == ["push 1 GiB"]


def test_version_numbers_put_a_quarter_under_caret_one() -> None:
    versions = datasets.version_numbers(1_000)
    assert len(set(versions)) == 1_000
    assert sum(v.startswith("1.") for v in versions) == 250
    assert datasets.highest_match_of_caret_one(1_000) == "1.4.49"


def test_made_up_versions_resolve_through_the_library(tmp_path: Path) -> None:
    import archive

    store = tmp_path / "store"
    archive.get_interface(store, create=True).close()
    datasets.make_versions(store, "many", 40)
    with archive.get_interface(store) as arc:
        assert arc.resolve("many", "^1").version == datasets.highest_match_of_caret_one(40)
        assert len(arc.versions("many")) == 40


def test_rewrite_keeps_the_size_and_changes_the_content(tmp_path: Path) -> None:
    folder = datasets.make_random_folder(tmp_path / "f", 3, 1000, per_folder=2)
    first = datasets.first_file(folder)
    before = first.read_bytes()
    assert datasets.rewrite_file(first) == 1000
    assert first.read_bytes() != before and len(first.read_bytes()) == 1000


def test_run_timed_reads_time_and_rss() -> None:
    import sys

    sample = run_timed([sys.executable, "-c", "pass"])
    assert sample.seconds > 0 and sample.max_rss_kib > 0
    assert parse_time_rss("Command exited with non-zero status 2\n4096\n") == 4096


@pytest.mark.parametrize("module", ["bench.report", "bench.datasets", "bench.measure"])
def test_doctests(module: str) -> None:
    """The examples in the bench's docstrings (pytest's config leaves bench/ out of collection)."""
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(module)).failed == 0


def test_rows_survive_a_json_round_trip() -> None:
    rows = [make_row(peak_rss_kib=2048, file_reads=3, notes=("n",)), make_row(anchor=())]
    again = report.rows_from_json(json.loads(json.dumps(report.to_json(rows, {}))))
    assert again == rows
