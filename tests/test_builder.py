"""``new_release``: a release assembled from scattered files, published all or nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.errors import InvalidInputError, InvalidPathError, ReadOnlyArchiveError, ReleaseExistsError
from tests.conftest import make_tree


def stored_keys(arc: archive.ArchiveInterface) -> set[str]:
    """Every object below the archive root, temporaries included."""
    root = Path(arc.location)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_an_exception_inside_publishes_nothing_and_leaves_nothing(folder_archive, tmp_path: Path) -> None:
    """Nothing reaches the archive before the block ends: no blob, no record, no temporary; and
    gc and verify have nothing to say."""
    src = make_tree(tmp_path / "src", {"a.bin": os.urandom(5000), "big.bin": os.urandom(5 * 1024 * 1024)})
    before = stored_keys(folder_archive)
    with pytest.raises(KeyError):
        with folder_archive.new_release("calib", "1.0.0", {"message": "half"}) as rel:
            rel.add_dir(src)
            rel.add_bytes(b"x" * 100, as_="made/x.txt")
            {}["missing"]
    assert stored_keys(folder_archive) == before
    assert folder_archive.versions("calib") == []
    report = folder_archive.verify()
    assert report.ok and report.errors == [] and report.warnings == []
    assert folder_archive.collect_garbage(grace_hours=0).removed == []


def test_the_block_publishes_every_kind_of_addition(folder_archive, tmp_path: Path) -> None:
    raw = make_tree(tmp_path / "raw", {"run1.bin": b"\x00\x01" * 500, "deep/run2.bin": b"r2",
                                       ".archiveignore": b"*.tmp\n", "skip.tmp": b"no"})
    gains = make_tree(tmp_path / "elsewhere", {"gains.csv": b"ch,gain\n1,0.98\n"}) / "gains.csv"
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\necho calibrated\n")
    tool.chmod(0o755)
    with folder_archive.new_release("calib", "1.3.0", metadata={"message": "May run"}) as rel:
        rel.add(gains, as_="sub/gains.csv")
        rel.add(tool)
        rel.add_dir(raw, prefix="raw")
        rel.add_bytes(b'{"run": 7}', as_="run.json")
        assert folder_archive.versions("calib") == []  # not before the end of the block
    release = folder_archive.resolve("calib", "^1")
    assert release == rel.release and release.metadata == {"message": "May run"}
    assert sorted(release.files) == ["raw/.archiveignore", "raw/deep/run2.bin", "raw/run1.bin", "run.json",
                                     "sub/gains.csv", "tool.sh"]  # as push would: skip.tmp ignored
    assert release.files["tool.sh"].executable and not release.files["run.json"].executable
    assert release.files["sub/gains.csv"].media_type == "text/csv"
    assert release.files["run.json"].media_type == "application/json"
    out = folder_archive.download("calib", "1.3.0", tmp_path / "out", progress=False)
    assert (out / "run.json").read_bytes() == b'{"run": 7}'
    assert (out / "tool.sh").stat().st_mode & stat.S_IXUSR  # pull restores the executable bit
    assert not (out / "sub/gains.csv").stat().st_mode & stat.S_IXUSR
    assert folder_archive.verify(full=True).ok


@pytest.mark.parametrize("adding, error", [
    (lambda rel, f: (rel.add(f, as_="x"), rel.add_bytes(b"1", as_="x")), "added twice"),
    (lambda rel, f: (rel.add(f, as_="A.txt"), rel.add(f, as_="a.txt")), "case-insensitive"),
    (lambda rel, f: (rel.add(f, as_="a"), rel.add(f, as_="a/b")), "needs it to be a folder"),
    (lambda rel, f: rel.add(f, as_="../escape"), "unsafe path"),
    (lambda rel, f: rel.add_bytes(b"1", as_="/abs"), "unsafe path"),
    (lambda rel, f: rel.add(f, as_=".archive/pulled.json"), "reserved"),
])
def test_bad_paths_are_refused_at_the_add_and_nothing_is_published(folder_archive, tmp_path: Path, adding,
                                                                  error: str) -> None:
    one = make_tree(tmp_path, {"one.txt": b"1"}) / "one.txt"
    with pytest.raises(InvalidPathError, match=error):
        with folder_archive.new_release("calib", "1.0.0") as rel:
            adding(rel, one)
    assert folder_archive.versions("calib") == []


def test_bad_input_is_refused_early(folder_archive, tmp_path: Path) -> None:
    with pytest.raises(archive.InvalidNameError):
        folder_archive.new_release("Bad Name", "1.0.0")
    with pytest.raises(archive.InvalidVersionError):
        folder_archive.new_release("calib", "1.0")
    with folder_archive.new_release("calib", "1.0.0") as rel:
        with pytest.raises(InvalidInputError, match="not a regular file"):
            rel.add(tmp_path)
        with pytest.raises(InvalidInputError, match="cannot add"):
            rel.add(tmp_path / "missing.txt")
        with pytest.raises(InvalidInputError, match="takes bytes"):
            rel.add_bytes("text", as_="t.txt")
        rel.add_bytes(b"ok", as_="ok.txt")
    with pytest.raises(InvalidInputError, match="closed"):
        rel.add_bytes(b"late", as_="late.txt")
    with pytest.raises(InvalidInputError, match="nothing was added"):
        with folder_archive.new_release("calib", "2.0.0"):
            pass
    assert folder_archive.versions("calib") == ["1.0.0"]


def test_same_content_again_is_a_no_op_and_other_content_is_refused(folder_archive) -> None:
    with folder_archive.new_release("calib", "1.0.0") as rel:
        rel.add_bytes(b"same", as_="f.txt")
    first = rel.release
    with folder_archive.new_release("calib", "1.0.0") as again:
        again.add_bytes(b"same", as_="f.txt")
    assert again.release.record_id == first.record_id
    with pytest.raises(ReleaseExistsError):
        with folder_archive.new_release("calib", "1.0.0") as other:
            other.add_bytes(b"other", as_="f.txt")
    assert folder_archive.resolve("calib", "1.0.0").record_id == first.record_id


def test_a_read_only_archive_refuses_to_build(folder_archive, tmp_path: Path) -> None:
    folder_archive.read_only = True
    with pytest.raises(ReadOnlyArchiveError):
        folder_archive.new_release("calib", "1.0.0")


def test_staged_bytes_are_removed_after_the_block(folder_archive, monkeypatch, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setenv("TMPDIR", str(staging))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with folder_archive.new_release("calib", "1.0.0") as rel:
        rel.add_bytes(b"data", as_="d.bin")
        assert list(staging.iterdir())
    assert list(staging.iterdir()) == []
    with pytest.raises(ValueError):
        with folder_archive.new_release("calib", "2.0.0") as rel:
            rel.add_bytes(b"data", as_="d.bin")
            raise ValueError("boom")
    assert list(staging.iterdir()) == []
    assert layout.release_key("calib", "2.0.0") not in stored_keys(folder_archive)
