"""The --json outputs follow the schemas of docs/json.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.yank import yank
from tests.conftest import make_tree
from tests.test_cli import run


@pytest.fixture
def store(tmp_path: Path) -> str:
    location = str(tmp_path / "store")
    with archive.get_interface(location, create=True) as arc:
        for version in ("1.0.0", "1.1.0"):
            arc.publish(make_tree(tmp_path / version, {"a.txt": version.encode()}), "calib", version,
                        {"message": f"m{version}"})
        yank(arc, "calib", "1.1.0", "bad", "ann")
    return location


def as_json(*args: str, code: int = 0) -> object:
    result = run(*args, "--json")
    assert result.returncode == code, result.stderr
    return json.loads(result.stdout)


def test_ls(store: str) -> None:
    assert as_json("-a", store, "ls") == {"names": ["calib"]}
    listing = as_json("-a", store, "ls", "calib")
    assert listing["name"] == "calib"
    newest, oldest = listing["versions"]
    assert (newest["version"], newest["message"], newest["yanked"]["reason"], newest["yanked"]["by"]) == (
        "1.1.0", "m1.1.0", "bad", "ann")
    assert oldest["yanked"] is None and oldest["record"].startswith("sha256:") and oldest["created"].endswith("Z")


def test_pull_status_lock(store: str, tmp_path: Path) -> None:
    pulled = as_json("-a", store, "pull", "calib", "1.1.0", "--to", str(tmp_path / "out"))
    assert pulled["version"] == "1.1.0" and pulled["yanked"]["reason"] == "bad" and pulled["written"] == 1
    (tmp_path / "out" / "a.txt").write_text("edited")
    status = as_json("status", str(tmp_path / "out"), code=1)
    assert status["clean"] is False and status["modified"] == ["a.txt"] and status["version"] == "1.1.0"
    locked = as_json("-a", store, "lock", "calib@^1", "-f", str(tmp_path / "archive.lock"))
    assert [e["version"] for e in locked["releases"]] == ["1.0.0"]


def test_verify_and_gc(store: str) -> None:
    assert as_json("-a", store, "verify")["ok"] is True
    assert as_json("-a", store, "gc", "-n") == {"dry_run": True, "removed": [], "restored": [], "bytes_freed": 0,
                                                "kept_young": 0, "grace_hours": 24.0}
    with archive.get_interface(store) as arc:
        blob = arc.get_release("calib", "1.0.0").files["a.txt"].blob
    (Path(store) / layout.blob_key(blob)).unlink()
    report = as_json("-a", store, "verify", code=1)
    assert report["ok"] is False and len(report["errors"]) == 1
