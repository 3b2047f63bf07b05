"""``pull --exact``, ``archive status`` and the pull summary, through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

MARKER_FILE = ".archive/pulled.json"  # archive.placed.MARKER_FILE, spelled out: the format is public
from tests.conftest import make_tree
from tests.test_publish import snapshot

V1 = {"keep.txt": b"same in both", "old.txt": b"only in 1", "gone/deep/old.bin": b"folder only in 1",
      "edited.txt": b"only in 1, edited later", "shared/x.txt": b"1"}
V2 = {"keep.txt": b"same in both", "new.txt": b"only in 2", "shared/x.txt": b"2"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def store(tmp_path: Path) -> str:
    location = str(tmp_path / "store")
    assert run("init", location).returncode == 0
    for version, files in (("1.0.0", V1), ("2.0.0", V2)):
        assert run("-a", location, "push", str(make_tree(tmp_path / version, files)), "calib", version).returncode == 0
    return location


def test_exact_removes_only_what_the_older_pull_placed_unchanged(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("-a", store, "pull", "calib", "1.0.0", "--to", str(out)).returncode == 0
    (out / "edited.txt").write_bytes(b"the user's edit")
    (out / "mine.txt").write_bytes(b"the user's own file")
    (out / "gone" / "mine-too.txt").write_bytes(b"the user's own file in a folder of the release")
    result = run("-a", store, "pull", "calib", "^2", "--to", str(out), "--exact")
    assert result.returncode == 0, result.stderr
    assert snapshot(out) == {**V2, "edited.txt": b"the user's edit", "mine.txt": b"the user's own file",
                             "gone/mine-too.txt": b"the user's own file in a folder of the release"}
    assert not (out / "gone" / "deep").exists()  # left empty by the removal: removed
    assert "2 removed" in result.stderr and "removed old.txt" in result.stderr
    assert "kept 1 edited file(s)" in result.stderr and "edited.txt" in result.stderr
    forced = run("-a", store, "pull", "calib", "^2", "--to", str(out), "--exact", "--force")
    assert forced.returncode == 0 and "removed edited.txt" in forced.stderr
    assert snapshot(out) == {**V2, "mine.txt": b"the user's own file",
                             "gone/mine-too.txt": b"the user's own file in a folder of the release"}


def test_without_exact_the_old_files_stay_and_a_later_exact_removes_them(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("-a", store, "pull", "calib", "1.0.0", "--to", str(out))
    assert run("-a", store, "pull", "calib", "^2", "--to", str(out), "--force").returncode == 0
    assert "old.txt" in snapshot(out)  # not --exact: nothing removed
    assert run("-a", store, "pull", "calib", "^2", "--to", str(out), "--exact").returncode == 0
    assert snapshot(out) == V2


def test_marker_records_what_was_placed(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("-a", store, "pull", "calib", "^2", "--to", str(out))
    marker = json.loads((out / MARKER_FILE).read_text())
    assert (marker["name"], marker["version"], marker["archive"]) == ("calib", "2.0.0", store)
    assert marker["record"].startswith("sha256:") and set(marker["files"]) == set(V2)
    assert marker["files"]["new.txt"]["size"] == len(V2["new.txt"])


def test_marker_is_canonical_json_with_every_field(tmp_path: Path) -> None:
    """The marker is one line of canonical JSON (keys sorted, compact, UTF-8 as is): names that
    need escaping, an executable file and files an earlier pull left (``earlier``) included."""
    location = str(tmp_path / "store")
    assert run("init", location).returncode == 0
    odd = {'é "quoted" ü.txt': b"odd name", "run.sh": b"#!/bin/sh\n", "a/\u2028line.txt": b"sep"}
    src = make_tree(tmp_path / "v1", odd)
    (src / "run.sh").chmod(0o755)
    assert run("-a", location, "push", str(src), "calib", "1.0.0").returncode == 0
    assert run("-a", location, "push", str(make_tree(tmp_path / "v2", V2)), "calib", "2.0.0").returncode == 0
    out = tmp_path / "out"
    for version in ("1.0.0", "2.0.0"):
        result = run("-a", location, "pull", "calib", version, "--to", str(out))
        assert result.returncode == 0, result.stderr
    data = (out / MARKER_FILE).read_bytes()
    marker = json.loads(data)
    assert data == json.dumps(marker, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    assert set(marker["files"]) == set(V2) and set(marker["earlier"]) == set(odd)
    assert marker["earlier"]["run.sh"]["executable"] is True and "executable" not in marker["files"]["new.txt"]
    assert marker["earlier"]['é "quoted" ü.txt']["size"] == len(b"odd name")


def test_a_tampered_marker_cannot_remove_outside_the_folder(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("-a", store, "pull", "calib", "1.0.0", "--to", str(out))
    victim = make_tree(tmp_path / "victim", {"old.txt": V1["old.txt"]})
    marker = json.loads((out / MARKER_FILE).read_text())
    marker["files"]["../victim/old.txt"] = marker["files"]["old.txt"]
    (out / MARKER_FILE).write_text(json.dumps(marker))
    result = run("-a", store, "pull", "calib", "^2", "--to", str(out), "--exact")
    assert result.returncode == 1 and "unsafe path" in result.stderr and result.stderr.count("\n") == 1
    assert (victim / "old.txt").exists() and (out / "old.txt").exists()


def test_status_lists_modified_missing_and_extra(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("-a", store, "pull", "calib", "1.0.0", "--to", str(out))
    clean = run("status", str(out))
    assert clean.returncode == 0 and "calib 1.0.0" in clean.stdout and "clean" in clean.stdout
    (out / "old.txt").write_bytes(b"changed")
    (out / "keep.txt").unlink()
    (out / "shared" / "extra.txt").write_bytes(b"new")
    os.chmod(out / "edited.txt", 0o755)
    dirty = run("status", str(out))
    assert dirty.returncode == 1, dirty.stderr
    lines = dirty.stdout.splitlines()
    assert "  modified: edited.txt" in lines and "  modified: old.txt" in lines
    assert "  missing:  keep.txt" in lines and "  extra:    shared/extra.txt" in lines
    assert lines[-1] == "2 modified, 1 missing, 1 extra"


def test_status_of_a_settled_folder_does_not_rehash(store: str, tmp_path: Path, monkeypatch) -> None:
    import archive.destination as destination
    import archive.placed as placed

    out = tmp_path / "out"
    run("-a", store, "pull", "calib", "1.0.0", "--to", str(out))
    old = time.time() - 3600
    for path in out.rglob("*"):
        os.utime(path, (old, old), follow_symlinks=False)
    assert placed.status(out).clean  # hashes once, remembers the settled files
    calls = []
    monkeypatch.setattr(destination, "hash_file", lambda path: calls.append(path))
    assert placed.status(out).clean and calls == []


@pytest.mark.parametrize("link", ["hard", "symlink", "copy"])
def test_status_of_linked_files(store: str, tmp_path: Path, link: str) -> None:
    out = tmp_path / "out"
    assert run("-a", store, "pull", "calib", "^2", "--to", str(out), "--link", link).returncode == 0
    clean = run("status", str(out))
    assert clean.returncode == 0, clean.stdout
    (out / "new.txt").unlink()
    (out / "new.txt").symlink_to(out / "keep.txt")
    dirty = run("status", str(out))
    assert dirty.returncode == 1 and "  modified: new.txt" in dirty.stdout.splitlines()


def test_status_without_a_marker_is_one_line(tmp_path: Path) -> None:
    result = run("status", str(make_tree(tmp_path / "plain", {"a": b"a"})))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "was not filled by archive pull" in result.stderr


def test_pull_says_which_version_the_range_chose(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run("-a", store, "pull", "calib", "^1", "--to", str(out))
    assert first.stdout == f"{out}\n"  # stdout stays the folder, for scripts
    assert first.stderr == f"pulled calib 1.0.0 (range ^1) into {out}: 5 files, 5 written, 0 already there\n"
    second = run("-a", store, "pull", "calib", "*", "--to", str(out), "--force")
    assert f"pulled calib 2.0.0 (range *) into {out}: 3 files, 2 written, 1 already there\n" == second.stderr
    assert run("-q", "-a", store, "pull", "calib", "--to", str(out)).stderr == ""


def test_exact_replaces_an_old_file_by_a_folder_of_the_new_release(store: str, tmp_path: Path) -> None:
    """1.x placed a file ``data``; 2.x has a folder ``data/``: --exact removes the unchanged file
    first, without --force, and says so."""
    location = store
    old = make_tree(tmp_path / "old", {"data": b"a file in 1.x"})
    new = make_tree(tmp_path / "new", {"data/inside.txt": b"a folder in 2.x"})
    assert run("-a", location, "push", str(old), "shape", "1.0.0").returncode == 0
    assert run("-a", location, "push", str(new), "shape", "2.0.0").returncode == 0
    out = tmp_path / "out"
    run("-a", location, "pull", "shape", "1.0.0", "--to", str(out))
    result = run("-a", location, "pull", "shape", "^2", "--to", str(out), "--exact")
    assert result.returncode == 0, result.stderr
    assert snapshot(out) == {"data/inside.txt": b"a folder in 2.x"} and "removed data" in result.stderr


def test_a_file_in_the_way_is_replaced_without_force_only_if_a_pull_placed_it(store: str, tmp_path: Path) -> None:
    old = make_tree(tmp_path / "old", {"data": b"a file in 1.x"})
    new = make_tree(tmp_path / "new", {"data/inside.txt": b"a folder in 2.x"})
    assert run("-a", store, "push", str(old), "shape", "1.0.0").returncode == 0
    assert run("-a", store, "push", str(new), "shape", "2.0.0").returncode == 0
    placed, edited = tmp_path / "placed", tmp_path / "edited"
    for out in (placed, edited):
        run("-a", store, "pull", "shape", "1.0.0", "--to", str(out))
    (edited / "data").write_bytes(b"the user's edit")
    assert run("-a", store, "pull", "shape", "^2", "--to", str(placed)).returncode == 0
    assert snapshot(placed) == {"data/inside.txt": b"a folder in 2.x"}
    refused = run("-a", store, "pull", "shape", "^2", "--to", str(edited))
    assert refused.returncode == 1 and "data (a file where the release needs a folder)" in refused.stderr
    assert snapshot(edited) == {"data": b"the user's edit"}


def test_marker_is_never_written_through_a_link_leading_outside(store: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".archive").symlink_to(outside, target_is_directory=True)
    result = run("-a", store, "pull", "calib", "^2", "--to", str(out))
    assert result.returncode == 1 and "symbolic link" in result.stderr and result.stderr.count("\n") == 1
    assert list(outside.iterdir()) == [] and snapshot(out) == {}
