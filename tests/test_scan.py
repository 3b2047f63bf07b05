"""The folder scan: deep folders, the executable bit, every problem in one error, what is left out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from archive.errors import FolderProblemsError, InvalidInputError
from archive.scan import scan_folder
from tests.conftest import make_tree, run_unprivileged
from tests.test_cli import run


def deep_folder(root: Path, depth: int) -> str:
    """A folder ``depth`` levels deep with one file at the bottom; return its release path."""
    path = "/".join(["d"] * depth)
    root.mkdir()
    for level in range(1, depth + 1):  # os.makedirs and Path.mkdir(parents=True) recurse
        os.mkdir(os.path.join(root, *["d"] * level))
    (root / path / "leaf.txt").write_bytes(b"deep")
    (root / "top.txt").write_bytes(b"top")
    return f"{path}/leaf.txt"


@pytest.fixture
def deep_src(tmp_path: Path):
    """``tmp_path/src`` holding a folder 1200 levels deep; removed bottom-up afterwards, as
    shutil.rmtree (pytest's cleanup) recurses and fails on it."""
    root = tmp_path / "src"
    yield deep_folder(root, 1200)
    (root / "top.txt").unlink()
    for level in range(1200, 0, -1):
        folder = os.path.join(root, *["d"] * level)
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


def test_a_folder_1200_levels_deep_is_scanned(tmp_path: Path, deep_src: str) -> None:
    assert [f.path for f in scan_folder(tmp_path / "src")] == [deep_src, "top.txt"]


def test_push_and_show_of_a_folder_1200_levels_deep(tmp_path: Path, deep_src: str) -> None:
    store = str(tmp_path / "store")
    leaf = deep_src
    assert run("init", store).returncode == 0
    push = run("-a", store, "push", str(tmp_path / "src"), "deep", "1.0.0")
    assert push.returncode == 0, push.stderr[-2000:]
    assert push.stdout.startswith("published deep 1.0.0: 2 files")
    shown = run("-a", store, "show", "deep")
    assert shown.returncode == 0 and shown.stdout.splitlines()[-2].endswith(f"  {leaf}")


def test_the_executable_bit_is_recorded(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"run.sh": b"#!/bin/sh\n", "data.txt": b"x", "bin/tool": b"t"})
    (src / "run.sh").chmod(0o755)
    (src / "bin" / "tool").chmod(0o700)
    (src / "data.txt").chmod(0o644)
    (src / "alias").symlink_to("run.sh")  # a link inside is published as its target, mode and all
    release = folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert {p: e.executable for p, e in release.files.items()} == {
        "alias": True, "bin/tool": True, "data.txt": False, "run.sh": True}
    stored = folder_archive.get_release("calib", "1.0.0")
    assert stored.files["run.sh"].executable and not stored.files["data.txt"].executable
    assert b'"executable":true' in stored.to_bytes()


def test_the_executable_bit_is_part_of_the_content(folder_archive, tmp_path: Path) -> None:
    """Republishing after ``chmod +x`` under the same version is a change, refused like any."""
    from archive.errors import ReleaseExistsError

    src = make_tree(tmp_path / "src", {"run.sh": b"#!/bin/sh\n"})
    folder_archive.publish(src, "calib", "1.0.0", progress=False)
    (src / "run.sh").chmod(0o755)
    with pytest.raises(ReleaseExistsError):
        folder_archive.publish(src, "calib", "1.0.0", progress=False)
    assert folder_archive.publish(src, "calib", "1.1.0", progress=False).files["run.sh"].executable


def hostile_folder(root: Path, outside: Path) -> Path:
    """A folder with eight problems of seven kinds, and good files around them."""
    src = make_tree(root, {"ok.txt": b"ok", "Data.txt": b"1", "data.txt": b"2", "sub/f": b"x",
                           "caf\u00e9": b"nfc", "cafe\u0301": b"nfd", "line\nbreak.txt": b"nl"})
    (src / "dangling").symlink_to("nowhere")
    (src / "leak").symlink_to(outside)
    (src / "sub" / "loop").symlink_to("..", target_is_directory=True)
    os.mkfifo(src / "pipe")
    with open(os.open(os.fsencode(src) + b"/bad-\xff.txt", os.O_CREAT | os.O_WRONLY, 0o644), "wb") as f:
        f.write(b"latin-1")
    return src


def test_every_problem_of_a_folder_is_reported_in_one_error(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"private")
    src = hostile_folder(tmp_path / "src", tmp_path / "secret")
    with pytest.raises(FolderProblemsError) as info:
        scan_folder(src)
    problems = info.value.problems
    expected = ["'dangling' is a broken link", "'leak' is a link to", "'pipe' is not a regular file",
                "'sub/loop' is a link that loops back", "are the same in Unicode NFC",
                "'Data.txt' and 'data.txt' clash on a case-insensitive", "'line\\nbreak.txt' in release: control",
                "'bad-\\udcff.txt' in release: not valid UTF-8"]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{len(expected)} problems in {str(src)!r}: ")
    assert message.endswith(f"; and {len(expected) - 3} more") and message.count("; ") == 3


def test_push_prints_every_problem_as_one_line_and_all_of_them_at_v(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"private")
    src = hostile_folder(tmp_path / "src", tmp_path / "secret")
    store = str(tmp_path / "store")
    assert run("init", store).returncode == 0
    result = run("-a", store, "push", str(src), "calib", "1.0.0")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("archive: error: 8 problems in ")
    assert "Traceback" not in result.stderr
    verbose = run("-v", "-a", store, "push", str(src), "calib", "1.0.0")
    assert verbose.returncode == 1 and verbose.stderr.count("archive: cannot publish: ") == 8
    assert run("-a", store, "ls").stdout == ""


def test_an_unreadable_folder_and_file_are_both_reported(shared_tmp: Path) -> None:
    src = make_tree(shared_tmp / "src", {"ok.txt": b"fine", "secret.bin": b"s", "locked/inner.txt": b"i"})
    (src / "secret.bin").chmod(0)
    (src / "locked").chmod(0)

    def attempt() -> list[str]:
        try:
            scan_folder(src)
        except FolderProblemsError as exc:
            return exc.problems
        return []

    try:
        assert sorted(run_unprivileged(attempt)) == ["cannot read 'secret.bin': Permission denied",
                                                     "cannot read folder 'locked': Permission denied"]
    finally:
        (src / "locked").chmod(0o755)


def test_a_file_that_vanishes_during_the_scan_is_not_part_of_the_folder(tmp_path: Path) -> None:
    """Listed, then removed before its stat: it is left out, not reported as a broken link."""
    from archive.scan import _stat_entry

    src = make_tree(tmp_path / "src", {"gone.txt": b"x"})
    with os.scandir(src) as listing:
        entry = next(iter(listing))
    (src / "gone.txt").unlink()
    problems: list[str] = []
    assert _stat_entry(str(src), entry, "gone.txt", problems) is None and problems == []


def test_exclude_patterns_and_archiveignore(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"keep.txt": b"k", "a.tmp": b"t", "sub/b.tmp": b"t",
                                       "sub/keep.tmp": b"kept", "build/out.o": b"o", "logs/x.log": b"l",
                                       ".archiveignore": b"# build products\nbuild/\n*.log\n!sub/keep.tmp\n"})
    # Inside the excluded folder: problems that would stop the publish if it were scanned.
    (src / "build" / "dangling").symlink_to("nowhere")
    os.mkfifo(src / "build" / "pipe")
    release = folder_archive.publish(src, "calib", "1.0.0", progress=False, exclude=["*.tmp"])
    assert set(release.files) == {".archiveignore", "keep.txt", "sub/keep.tmp"}


def test_exclude_from_the_command_line(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"keep.txt": b"k", "a.tmp": b"t", "cache/big.bin": b"b"})
    store = str(tmp_path / "store")
    assert run("init", store).returncode == 0
    push = run("-a", store, "push", str(src), "calib", "1.0.0", "--exclude", "*.tmp", "-x", "cache/")
    assert push.returncode == 0, push.stderr
    assert push.stdout.startswith("published calib 1.0.0: 1 file,")


def test_a_top_level_archive_marker_is_never_published(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"f.txt": b"f", ".archive/pulled.json": b"{}", "sub/.archive": b"kept"})
    assert [f.path for f in scan_folder(src)] == ["f.txt", "sub/.archive"]


def test_bad_ignore_file_is_one_line(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"f.txt": b"f", ".archiveignore": b"\xff\xfe"})
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        scan_folder(src)


def test_excluded_entries_are_matched_without_a_stat(tmp_path: Path) -> None:
    """A plain excluded entry is matched from its listing alone: even a folder the scan may
    not enter, or a file that is not regular, is never looked at."""
    src = make_tree(tmp_path / "src", {"f.txt": b"f", "private/x": b"x"})
    os.mkfifo(src / "fifo")
    files = scan_folder(src, ["private/", "fifo"])
    assert [f.path for f in files] == ["f.txt"]
    assert stat.S_ISREG(files[0].info.st_mode)


@pytest.mark.timeout(20)  # a hang guard: opening the FIFO would block
def test_an_archiveignore_that_is_a_fifo_is_reported_not_opened(tmp_path: Path) -> None:
    """Opening a FIFO for its patterns would block the publish forever."""
    src = make_tree(tmp_path / "src", {"f.txt": b"f"})
    os.mkfifo(src / ".archiveignore")
    with pytest.raises(FolderProblemsError, match="'.archiveignore' is not a regular file"):
        scan_folder(src)


def test_one_pattern_given_as_a_string_is_one_pattern(folder_archive, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"f.txt": b"f", "x.tmp": b"t"})
    release = folder_archive.publish(src, "calib", "1.0.0", progress=False, exclude="*.tmp")
    assert set(release.files) == {"f.txt"}


def test_a_file_where_another_system_needs_a_folder_is_reported(tmp_path: Path) -> None:
    """``Lib`` (a file) and ``lib/x.py`` coexist here but not on a case-insensitive system."""
    src = make_tree(tmp_path / "src", {"Lib": b"file", "lib/x.py": b"x", "ok.txt": b"ok"})
    with pytest.raises(FolderProblemsError) as info:
        scan_folder(src)
    assert info.value.problems == ["'Lib' is a file but 'lib/x.py' needs it to be a folder"]


def test_an_invalid_pattern_is_one_line(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"f.txt": b"f"})
    with pytest.raises(InvalidInputError, match=r"Invalid git pattern: '!' \(in an --exclude or .archiveignore\)"):
        scan_folder(src, ["!"])


@pytest.mark.timeout(60)  # a hang guard: without the bound the scan runs for hours
def test_links_that_multiply_paths_stop_the_scan_at_what_a_record_can_hold(tmp_path: Path, monkeypatch) -> None:
    """Each level links twice to the next: 2 ** 40 paths. The scan stops at the bound (lowered
    here from the ~2,800,000 files a 256 MiB record can list) instead of running for hours."""
    import archive.scan

    monkeypatch.setattr(archive.scan, "MAX_FILES", 1000)
    src = make_tree(tmp_path / "src", {"l40/f.txt": b"f"})
    for level in range(39, -1, -1):
        (src / f"l{level}").mkdir()
        for link in "ab":
            (src / f"l{level}" / link).symlink_to(f"../l{level + 1}", target_is_directory=True)
    with pytest.raises(FolderProblemsError, match="more than 1000 files, more than a release can list"):
        scan_folder(src)
