"""Yanking: skipped by ranges, served to an exact version and a lock, shown with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

import archive
from archive.errors import InvalidInputError, NoMatchingVersionError, ReleaseNotFoundError
from archive.yank import history, unyank, yank, yanked
from tests.conftest import make_tree
from tests.test_cli import run


@pytest.fixture
def calib(folder_archive: archive.ArchiveInterface, tmp_path: Path) -> archive.ArchiveInterface:
    for version in ("1.2.2", "1.2.3"):
        folder_archive.publish(make_tree(tmp_path / version, {"v.txt": version.encode()}), "calib", version,
                               {"message": f"release {version}"})
    return folder_archive


def _keys(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_yanked_is_skipped_by_a_range_but_served_exactly_and_to_a_lock(calib, tmp_path: Path) -> None:
    before = _keys(Path(calib.location))
    result = run("-a", calib.location, "yank", "calib", "1.2.3", "--reason", "wrong gains", "--by", "ann")
    assert result.returncode == 0 and result.stdout == "yanked calib 1.2.3: wrong gains\n"
    after = _keys(Path(calib.location))
    assert {k: v for k, v in after.items() if k in before} == before  # nothing altered, only added
    assert sorted(k for k in after if k not in before) == ["yanks/calib/1.2.3/00000001.json", "yanks/calib/index.json"]
    assert calib.resolve("calib", "^1").version == "1.2.2"
    assert calib.resolve("calib", "1.2.3").version == "1.2.3"
    assert calib.resolve("calib", "=1.2.3").version == "1.2.3"
    lock = tmp_path / "archive.lock"
    lock.write_text(f'lock-version = 1\n[[release]]\nname = "calib"\nrange = "1.2.3"\nversion = "1.2.3"\n'
                    f'record = "{calib.release_id("calib", "1.2.3")}"\narchive = "{calib.location}"\n')
    assert (calib.sync(lock, tmp_path / "out")["calib"] / "v.txt").read_text() == "1.2.3"
    pulled = run("-a", calib.location, "pull", "calib", "1.2.3")
    assert pulled.returncode == 0 and "yanked: wrong gains" in pulled.stderr


def test_unyank_keeps_the_history(calib) -> None:
    yank(calib, "calib", "1.2.3", "wrong gains", "ann")
    with pytest.raises(InvalidInputError, match="yanked already"):
        yank(calib, "calib", "1.2.3", "again", "ann")
    unyank(calib, "calib", "1.2.3", "gains were right", "bob")
    assert calib.resolve("calib", "^1").version == "1.2.3"
    assert yanked(calib, "calib") == {}
    assert [(m.action, m.by, m.reason) for m in history(calib, "calib", "1.2.3")] == [
        ("yank", "ann", "wrong gains"), ("unyank", "bob", "gains were right")]
    with pytest.raises(InvalidInputError, match="not yanked"):
        unyank(calib, "calib", "1.2.3", "x", "bob")


def test_every_match_yanked_says_so(calib) -> None:
    yank(calib, "calib", "1.2.3", "bad", "ann")
    yank(calib, "calib", "1.2.2", "bad too", "ann")
    with pytest.raises(NoMatchingVersionError, match="yanked: 1.2.2, 1.2.3"):
        calib.resolve("calib", "^1")


def test_yank_refuses_a_missing_release_and_an_empty_reason(calib) -> None:
    with pytest.raises(ReleaseNotFoundError):
        yank(calib, "calib", "9.9.9", "x", "ann")
    result = run("-a", calib.location, "yank", "calib", "1.2.3", "--reason", "  ")
    assert result.returncode == 1 and "needs a reason" in result.stderr
    assert yanked(calib, "calib") == {}


def test_ls_and_show_tell_the_yank(calib) -> None:
    yank(calib, "calib", "1.2.3", "wrong gains", "ann")
    listing = run("-a", calib.location, "ls", "calib").stdout.splitlines()
    assert listing[0].startswith("1.2.3") and "yanked: wrong gains" in listing[0] and "release 1.2.3" in listing[0]
    assert "yanked" not in listing[1]
    shown = run("-a", calib.location, "show", "calib", "1.2.3").stdout
    assert "yanked   wrong gains (by ann" in shown


def test_a_mirror_carries_the_yanks(calib, tmp_path: Path) -> None:
    yank(calib, "calib", "1.2.3", "wrong gains", "ann")
    target = str(tmp_path / "mirror")
    assert run("mirror", calib.location, target, "--create").returncode == 0
    with archive.get_interface(target) as copy:
        assert copy.resolve("calib", "^1").version == "1.2.2"
        assert [m.reason for m in history(copy, "calib", "1.2.3")] == ["wrong gains"]
    unyank(calib, "calib", "1.2.3", "fine", "bob")
    assert run("mirror", calib.location, target).returncode == 0  # a rerun adds the new marker only
    with archive.get_interface(target) as copy:
        assert copy.resolve("calib", "^1").version == "1.2.3"


def test_ls_lists_a_version_whose_record_is_damaged_with_a_warning(calib) -> None:
    from archive import layout

    record = calib.release_id("calib", "1.2.2")
    (Path(calib.location) / layout.blob_key(record)).write_bytes(b"{}")
    result = run("-a", calib.location, "ls", "calib")
    assert result.returncode == 0 and [line.split()[0] for line in result.stdout.splitlines()] == ["1.2.3", "1.2.2"]
    assert "archive: warning: record" in result.stderr
