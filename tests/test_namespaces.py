"""Namespaced names ``NAMESPACE/NAME``: the name rules, the CLI, and what older readers see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.errors import InvalidNameError, NotAnArchiveError
from archive.records import check_name
from tests.conftest import make_tree
from tests.test_cli import one_line_error, run


@pytest.mark.parametrize("name", ["team/calib", "a/b", "metrology-group/x.y_z"])
def test_a_name_may_carry_one_namespace(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["a/b/c", "/a", "a/", "/", "Team/calib", "team/Calib", "..a/b", "a/.b",
                                  "a//b", "-a/b", "a/b-", "a" * 129 + "/b"])
def test_a_bad_namespace_or_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_name(name)


def test_stored_below_a_namespace_folder_that_no_plain_name_can_hold(folder_archive, tmp_path: Path) -> None:
    folder_archive.publish(make_tree(tmp_path / "src", {"f": b"x"}), "team/calib", "1.0.0", progress=False)
    assert (folder_archive.root / "releases" / "@team" / "calib" / "1.0.0").is_file()
    assert json.loads((folder_archive.root / layout.MARKER_KEY).read_text())["version"] == 2


def test_an_archive_without_namespaces_stays_format_1(folder_archive, tmp_path: Path) -> None:
    marker = (folder_archive.root / layout.MARKER_KEY).read_bytes()
    folder_archive.publish(make_tree(tmp_path / "src", {"f": b"x"}), "calib", "1.0.0", progress=False)
    assert (folder_archive.root / layout.MARKER_KEY).read_bytes() == marker


def test_a_format_this_tool_does_not_know_is_refused(folder_archive) -> None:
    marker = folder_archive.root / layout.MARKER_KEY
    marker.chmod(0o644)
    marker.write_text('{"format":"archive","version":3}\n')
    with pytest.raises(NotAnArchiveError, match="archive format 3, this tool reads 1 and 2"):
        archive.get_interface(folder_archive.root)


def test_cli_lists_names_and_one_namespace(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    assert run("init", store).returncode == 0
    src = make_tree(tmp_path / "src", {"a.txt": b"hello"})
    for name in ("calib", "team/calib", "team/gains", "lab/calib"):
        assert run("-a", store, "push", str(src), name, "1.0.0").returncode == 0
    assert run("-a", store, "ls").stdout.split() == ["calib", "lab/calib", "team/calib", "team/gains"]
    assert run("-a", store, "ls", "team/").stdout.split() == ["team/calib", "team/gains"]
    assert run("-a", store, "ls", "team/calib").stdout.split()[0] == "1.0.0"
    assert run("-a", store, "show", "team/calib").stdout.startswith("team/calib 1.0.0")
    pulled = run("-a", store, "pull", "team/calib", "^1", "--to", str(tmp_path / "out"))
    assert pulled.returncode == 0 and (tmp_path / "out" / "a.txt").read_bytes() == b"hello"
    cached = run("-a", store, "pull", "team/calib")
    assert cached.returncode == 0 and "@team" in cached.stdout, cached.stdout
    assert run("-a", store, "verify", "team/calib").returncode == 0
    one_line_error(run("-a", store, "ls", "nobody/"), 1, "no namespace 'nobody'")
    for command in (["ls", "team"], ["pull", "team"], ["verify", "team"], ["show", "team"]):
        one_line_error(run("-a", store, *command), 1, "no release named 'team' in")
        assert "'team' is a namespace holding team/calib, team/gains" in run("-a", store, *command).stderr
    assert "namespace" not in run("-a", store, "ls", "nobody").stderr
    one_line_error(run("-a", store, "ls", "Bad/"), 1, "invalid namespace 'Bad'")
    one_line_error(run("-a", store, "push", str(src), "a/b/c", "1.0.0"), 1, "invalid release name 'a/b/c'")
