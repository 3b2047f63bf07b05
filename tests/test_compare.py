"""``diff``, what ``show`` says about the previous version, and ``stats``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archive.compare import diff_releases, previous_release, shared_bytes
from archive.stats import archive_stats
from tests.conftest import make_tree
from tests.counting import Counting
from tests.test_cli import one_line_error, run

BIG = bytes(range(256)) * 400  # 102400 bytes


@pytest.fixture
def two_versions(folder_archive, tmp_path: Path):
    src = make_tree(tmp_path / "src", {"big.bin": BIG, "gains.csv": b"ch,gain\n1,0.98\n", "old.txt": b"old",
                                       "run.sh": b"#!/bin/sh\n"})
    first = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    (src / "old.txt").unlink()
    (src / "gains.csv").write_bytes(b"ch,gain\n1,0.97\n2,1.01\n")
    (src / "new.txt").write_bytes(b"new!")
    (src / "run.sh").chmod(0o755)
    second = folder_archive.publish(src, "calib", "1.1.0", progress=False)
    return folder_archive, first, second


def test_diff_lists_added_removed_and_changed_from_the_records(two_versions) -> None:
    arc, first, second = two_versions
    counting = Counting(arc)
    result = diff_releases(counting.resolve("calib", "1.0.0"), counting.resolve("calib", "^1"))
    assert counting.blobs_opened(besides=[first.record_id, second.record_id]) == []  # no content fetched
    assert [(c.path, c.new.size) for c in result.added] == [("new.txt", 4)]
    assert [(c.path, c.old.size) for c in result.removed] == [("old.txt", 3)]
    assert [(c.path, c.old.size, c.new.size) for c in result.changed] == [("gains.csv", 15, 22), ("run.sh", 10, 10)]
    assert result.unchanged == 1 and not result.same
    assert diff_releases(first, first).same
    data = result.to_json()
    assert data["changed"][1] == {"path": "run.sh", "old_size": 10, "new_size": 10, "content_changed": False,
                                  "executable_changed": True, "old_blob": str(first.files["run.sh"].blob),
                                  "new_blob": str(second.files["run.sh"].blob)}
    assert data["shared_bytes"] == len(BIG) + 10 and data["from"]["version"] == "1.0.0"


def test_a_media_type_alone_is_no_change(two_versions) -> None:
    from dataclasses import replace

    _, first, _ = two_versions
    relabelled = replace(first, files={p: replace(e, media_type="x/y") for p, e in first.files.items()})
    assert diff_releases(first, relabelled).same


def test_diff_on_the_command_line(two_versions) -> None:
    arc, _, _ = two_versions
    shown = run("-a", arc.location, "diff", "calib", "1.0.0", "1.1.0")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "calib 1.0.0 -> 1.1.0: 1 added, 1 removed, 2 changed, 1 unchanged; 100.0 KiB shared"
    assert lines[1].split() == ["added", "4", "B", "new.txt"]
    assert lines[2].split() == ["removed", "3", "B", "old.txt"]
    assert lines[3].split() == ["changed", "15", "B", "->", "22", "B", "gains.csv"]
    assert lines[4].endswith("run.sh (executable: false -> true)")
    data = json.loads(run("-a", arc.location, "diff", "calib", "1.0.0", "^1", "--json").stdout)
    assert [c["path"] for c in data["added"]] == ["new.txt"] and data["to"]["version"] == "1.1.0"
    one_line_error(run("-a", arc.location, "diff", "calib", "1.0.0", "^3"), 1, "no version of 'calib' matches '^3'")


def test_show_tells_what_is_shared_with_the_previous_version(two_versions) -> None:
    arc, first, second = two_versions
    assert previous_release(arc, second) == first and previous_release(arc, first) is None
    shown = run("-a", arc.location, "show", "calib").stdout.splitlines()
    assert "  files    4, 100.0 KiB" in shown
    assert f"  shared   {100.0:.1f} KiB with 1.0.0 (stored once for both)" in shown
    assert "  previous none (the first version)" in run("-a", arc.location, "show", "calib", "1.0.0").stdout.splitlines()
    assert shared_bytes(first, second) == len(BIG) + 10


def test_stats_count_logical_and_stored_bytes(two_versions, tmp_path: Path) -> None:
    arc, first, second = two_versions
    arc.publish(make_tree(tmp_path / "o", {"copy.bin": BIG, "x": b"12345"}), "team/other", "0.1.0", progress=False)
    result = archive_stats(arc)
    by_name = {n.name: n for n in result.names}
    calib = by_name["calib"]
    assert (calib.releases, calib.files) == (2, 8)
    assert calib.logical_bytes == first.total_size + second.total_size
    distinct = {e.blob: e.size for r in (first, second) for e in r.files.values()}
    assert calib.stored_bytes == sum(distinct.values()) and calib.dedup_savings == len(BIG) + 10
    other = by_name["team/other"]
    assert (other.logical_bytes, other.stored_bytes) == (len(BIG) + 5, len(BIG) + 5)
    assert result.total.stored_bytes == calib.stored_bytes + 5  # BIG is stored once for both names
    assert result.total.logical_bytes == calib.logical_bytes + other.logical_bytes
    assert result.total.releases == 3


def test_stats_on_the_command_line(two_versions) -> None:
    arc, _, _ = two_versions
    table = run("-a", arc.location, "stats")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["name", "releases", "files", "logical", "stored", "saved"]
    assert lines[1].split()[:3] == ["calib", "2", "8"] and lines[-1].split()[0] == "total"
    data = json.loads(run("-a", arc.location, "stats", "calib", "--json").stdout)
    assert data["format"] == 1 and [n["name"] for n in data["names"]] == ["calib"]
    assert data["total"]["dedup_savings"] == len(BIG) + 10 and "name" not in data["total"]
    one_line_error(run("-a", arc.location, "stats", "nope"), 1, "no release named 'nope'")
    one_line_error(run("-a", arc.location, "stats", "team/"), 1, "no namespace 'team'")


def test_stats_of_an_empty_archive(folder_archive) -> None:
    result = archive_stats(folder_archive)
    assert result.names == [] and result.total.releases == 0 and result.total.dedup_savings == 0
    data = json.loads(run("-a", folder_archive.location, "stats", "--json").stdout)
    assert data["total"] == {"releases": 0, "files": 0, "logical_bytes": 0, "stored_bytes": 0, "dedup_savings": 0}
