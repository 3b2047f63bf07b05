"""The helper process that shares the stats of a large scan (archive/scan_helper.py).

Real processes and real files: the helper is the interpreter running the tests, started as a
scan starts it. Each test compares a scan with the helper against the same scan without one:
the helper may only ever change how long a scan takes, never what it finds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import archive.helper_process as helper_process
import archive.scan as scan
import archive.scan_helper as scan_helper

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the helper shares memory files (Linux)")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """60 folders of 20 files, a nested folder, a link to a file, a FIFO and a name that is
    not UTF-8: the helper states the regular files, this process everything else."""
    root = tmp_path / "tree"
    for folder in range(60):
        (root / f"d{folder:02}").mkdir(parents=True)
        for number in range(20):
            (root / f"d{folder:02}" / f"f{number:02}.bin").write_bytes(b"x" * number)
    (root / "d07" / "inner").mkdir()
    (root / "d07" / "inner" / "deep.txt").write_text("deep")
    os.symlink("f01.bin", root / "d09" / "link.bin")
    os.mkfifo(root / "d11" / "pipe")
    (root / "d13" / os.fsdecode(b"\xff-raw.bin")).write_bytes(b"raw")
    return root


@pytest.fixture
def slow_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk that lists a folder every 2 ms (as on a slow network file system), and waits
    before its 31st folder (up to 10 s) until a helper it started has written an answer: the
    helper, started after the first 10 files, takes part however busy the machine is."""
    listing, making = scan._listing, scan_helper.StatHelper.__init__
    started: list[scan_helper.StatHelper] = []

    def remembered(self):
        making(self)
        started.append(self)

    def slowly(folder, problems):
        time.sleep(0.002)
        if folder.prefix == "d30/" and started and started[0]._table is not None:
            waited = time.monotonic() + 10
            while scan_helper._HEAD.unpack_from(started[0]._table)[3] <= len(scan_helper.GREETING) \
                    and time.monotonic() < waited and started[0]._helper.poll() is None:
                time.sleep(0.005)
        return listing(folder, problems)

    monkeypatch.setattr(scan_helper.StatHelper, "__init__", remembered)
    monkeypatch.setattr(scan, "_listing", slowly)
    monkeypatch.setattr(scan, "MIN_FILES", 10)


def walked(root: Path) -> tuple[list, list[str]]:
    files, problems = scan._walk(str(root), ())
    return sorted(files), sorted(problems)


def without_helper(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list[str]]:
    with monkeypatch.context() as patch:
        patch.setattr(scan, "MIN_FILES", 10 ** 9)
        return walked(root)


def answers_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The folder numbers of every answer the scan reads from the helper."""
    counted: list[int] = []
    answers = scan_helper.StatHelper.answers

    def counting(self):
        for number, found in answers(self):
            counted.append(number)
            yield number, found

    monkeypatch.setattr(scan_helper.StatHelper, "answers", counting)
    return counted


def test_the_helper_states_part_of_the_files_and_the_scan_finds_the_same(tree: Path, slow_walk,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    expected = without_helper(tree, monkeypatch)
    counted = answers_counted(monkeypatch)
    assert walked(tree) == expected
    assert counted, "the helper answered no folder"
    assert len(expected[0]) == 60 * 20 + 3 and len(expected[1]) == 1  # the FIFO is the one problem


@pytest.mark.parametrize("broken", ["stops after 3 folders", "answers one name short", "says no greeting",
                                    "answers a folder not asked"])
def test_what_the_helper_does_not_answer_rightly_is_stated_here(broken: str, tree: Path, slow_walk,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    expected = without_helper(tree, monkeypatch)
    code = scan_helper.HELPER
    changed = {
        "stops after 3 folders": code.replace("\n            answer = marshal.dumps((number, found))",
                                              "\n            if written > 3000: os._exit(0)"
                                              "\n            answer = marshal.dumps((number, found))"),
        "answers one name short": code.replace("marshal.dumps((number, found))", "marshal.dumps((number, found[1:]))"),
        "says no greeting": code.replace(f"os.write(answers_fd, {scan_helper.GREETING!r})", "os.write(answers_fd, b'hello')"),
        "answers a folder not asked": code.replace("marshal.dumps((number, found))", "marshal.dumps((number + 10**6, found))"),
    }[broken]
    assert changed != code
    monkeypatch.setattr(scan_helper, "HELPER", changed)
    assert walked(tree) == expected


@pytest.mark.parametrize("program", ["missing/python3", "/bin/echo"])
def test_a_scan_without_a_helper_states_every_file_itself(program: str, tree: Path, slow_walk, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    expected = without_helper(tree, monkeypatch)
    monkeypatch.setattr(helper_process.sys, "executable", str(tmp_path / program) if program.startswith("missing")
                        else program)
    counted = answers_counted(monkeypatch)
    assert walked(tree) == expected
    assert counted == []


def test_a_file_that_vanishes_before_its_stat_is_not_part_of_the_folder(tree: Path, slow_walk,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Files removed after their folder was listed, whoever states them: not found, no problem."""
    expected_problems = without_helper(tree, monkeypatch)[1]
    listing = scan._listing

    def removing(folder, problems):
        entries = listing(folder, problems)
        if folder.prefix.count("/") == 1:  # d00/ to d59/
            os.remove(tree / folder.prefix / "f05.bin")
        return entries

    monkeypatch.setattr(scan, "_listing", removing)
    files, problems = walked(tree)
    found = {file.path for file in files}
    assert not [path for path in found if path.endswith("/f05.bin")]
    assert "d00/f04.bin" in found and len(files) == 60 * 19 + 3
    assert problems == expected_problems


def test_an_interrupted_scan_leaves_no_helper_running(tree: Path, slow_walk, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[scan_helper.StatHelper] = []
    making = scan_helper.StatHelper.__init__

    def remembered(self):
        making(self)
        started.append(self)

    listing = scan._listing  # the slow one

    def interrupted(folder, problems):
        if started and folder.prefix == "d40/":
            raise KeyboardInterrupt
        return listing(folder, problems)

    monkeypatch.setattr(scan_helper.StatHelper, "__init__", remembered)
    monkeypatch.setattr(scan, "_listing", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scan._walk(str(tree), ())
    assert started and started[0]._helper is not None
    process = started[0]._helper
    assert process.returncode is not None  # killed and reaped
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
