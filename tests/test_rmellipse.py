"""Coming from rmellipse: archives built by rmellipse 0.4.5's own code, imported, pulled back.

rmellipse runs in its own venv (``.venv-rmellipse/`` in the repository, made by
scripts/install-test-deps.sh, or here on first use; ``$RMELLIPSE_PYTHON`` names another
interpreter that has it), so the project's dependencies stay clean. Its archives are built by
tests/rmellipse_helper.py with rmellipse's API (what ``rme release`` calls), and every release
is compared file by file with what rmellipse's own download gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keyring
import pytest

import archive
from archive.backends.sftp import KEYRING_SERVICE
from archive.errors import InvalidInputError, ReleaseExistsError
from archive.importers.rmellipse_source import release_name, workspace_namespace
from tests.conftest import make_tree
from tests.needs import unavailable
from tests.sshd import keyring_file, password_user, ssh_home, ssh_key_home, sshd  # noqa: F401
from tests.test_cli import one_line_error, run
from tests.test_publish import snapshot

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-rmellipse"
HELPER = Path(__file__).resolve().parent / "rmellipse_helper.py"
DEFAULT = "Global Public Workspace"


@dataclass(frozen=True)
class Built:
    """One release rmellipse wrote: where, and the name our import gives it."""

    workspace: str
    title: str
    version: str
    name: str


@pytest.fixture(scope="session")
def rme_python() -> Path:
    """A Python with rmellipse 0.4.5 (made once: a venv in the repository, gitignored)."""
    python = Path(os.environ.get("RMELLIPSE_PYTHON") or VENV / "bin" / "python")
    if _has_rmellipse(python):
        return python
    if "RMELLIPSE_PYTHON" not in os.environ:
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "rmellipse==0.4.5"], capture_output=True,
                             text=True, timeout=1200) if made.returncode == 0 else made
        if pip.returncode == 0 and _has_rmellipse(python):
            return python
    unavailable(f"no Python with rmellipse 0.4.5 at {python} (scripts/install-test-deps.sh makes one)")


def _has_rmellipse(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import importlib.metadata as m; assert m.version('rmellipse') == '0.4.5'"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def rmellipse(python: Path, actions: list[dict], tmp: Path) -> None:
    """Run ``actions`` with rmellipse's code (see tests/rmellipse_helper.py)."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / f"actions-{random.getrandbits(64):x}.json"
    spec.write_text(json.dumps(actions), encoding="utf-8")
    result = subprocess.run([str(python), str(HELPER), str(spec)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def rme_archive(rme_python: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Built]]:
    """An rmellipse archive: two workspaces (one named with a space), versions sharing files, a
    file shared between two names, an empty file, HDF5 files, non-ASCII and space paths, and a
    title that is not a valid name of ours."""
    base = tmp_path_factory.mktemp("rme")
    root = base / "root"
    root.mkdir()
    (root / ".rmearchive").touch()
    rng = random.Random(12)
    big, csv = rng.randbytes(300_000), "t,v\n0,1.5\n1,2.5\n".encode()
    trees = {
        "v1": {"a.txt": b"alpha", "empty": b"", "donn\u00e9es/mesure 1.csv": csv},
        "v2": {"a.txt": b"alpha 2", "empty": b"", "donn\u00e9es/mesure 1.csv": csv, "big.bin": big},
        "v3": {"a.txt": b"alpha 2", "big.bin": big, "run \u65e5\u672c/log.txt": b"ok\n"},
        "gains": {"donn\u00e9es/mesure 1.csv": csv, "big.bin": big, "README": b"gains"},
        "metro": {"a.txt": b"alpha", "notes \u00e9t\u00e9.txt": b"n"},
    }
    actions = []
    for label, files in trees.items():
        make_tree(base / label, files)
        actions.append({"do": "h5", "path": str(base / label / "data" / "sweep.h5"), "scale": len(label)})
    built = [Built(DEFAULT, "calib", "1.0.0", "calib"), Built(DEFAULT, "calib", "1.1.0", "calib"),
             Built(DEFAULT, "calib", "2.0.0", "calib"), Built(DEFAULT, "gains", "0.1.0", "gains"),
             Built("Metrology Group", "calib", "1.0.0", "metrology-group/calib"),
             Built("Metrology Group", "Line Scan", "1.0.0", "metrology-group/line-scan")]
    folders = ["v1", "v2", "v3", "gains", "metro", "v1"]
    actions += [{"do": "release", "root": str(root), "workspace": b.workspace, "title": b.title,
                 "version": b.version, "folder": str(base / folder)} for b, folder in zip(built, folders)]
    rmellipse(rme_python, actions, base)
    return root, built


def tree_state(root: Path) -> dict[str, tuple]:
    """Every file and folder below ``root`` with its times, mode, size and content hash: any
    write, touch, chmod or rename shows."""
    state = {}
    for path in sorted(root.rglob("*")) + [root]:
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path)] = (info.st_mtime_ns, info.st_ctime_ns, info.st_mode, info.st_size, digest)
    return state


def init(tmp_path: Path, name: str = "store") -> str:
    location = str(tmp_path / name)
    assert run("init", location).returncode == 0
    return location


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("workspace, namespace", [(DEFAULT, None), ("Metrology Group", "metrology-group"),
                                                  ("  RF & Microwave!! ", "rf-microwave"), ("team", "team"),
                                                  ("\u00c9quipe donn\u00e9es", "quipe-donn-es")])
def test_workspace_slug(workspace: str, namespace: str | None) -> None:
    assert workspace_namespace(workspace) == namespace


def test_title_kept_when_valid_else_made_one() -> None:
    assert release_name("calib_v2.x", None) == "calib_v2.x"
    assert release_name("Line Scan", "team") == "team/line-scan"
    with pytest.raises(InvalidInputError, match="makes no valid namespace"):
        workspace_namespace("!!!")


# ------------------------------------------------------------------ import, pull, compare
def test_import_then_pull_every_release_as_rmellipse_downloads_it(rme_archive, rme_python: Path,
                                                                  tmp_path: Path) -> None:
    root, built = rme_archive
    before = tree_state(root)
    store = init(tmp_path)
    dry = run("-a", store, "import", str(root), "--from", "rmellipse", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.splitlines()) == sorted(f"would import {b.name} {b.version}" for b in built)
    assert run("-a", store, "ls").stdout == ""
    done = run("-a", store, "import", str(root), "--from", "rmellipse")
    assert done.returncode == 0, done.stderr
    assert f"imported {len(built)} releases (0 present already)" in done.stdout
    assert run("-a", store, "ls").stdout.split() == ["calib", "gains", "metrology-group/calib",
                                                     "metrology-group/line-scan"]
    assert run("-a", store, "ls", "metrology-group/").stdout.split() == ["metrology-group/calib",
                                                                        "metrology-group/line-scan"]
    downloads = [{"do": "download", "root": str(root), "workspace": b.workspace, "title": b.title,
                  "version": b.version, "dest": str(tmp_path / "rme" / str(i))} for i, b in enumerate(built)]
    rmellipse(rme_python, downloads, tmp_path)
    for i, b in enumerate(built):
        pulled = run("-a", store, "pull", b.name, b.version, "--to", str(tmp_path / "ours" / str(i)))
        assert pulled.returncode == 0, pulled.stderr
        theirs = {path: data for path, data in snapshot(tmp_path / "rme" / str(i)).items()
                  if not path.startswith(".rme/")}
        assert snapshot(tmp_path / "ours" / str(i)) == theirs, b
        assert "empty" not in theirs or theirs["empty"] == b""
    verify = run("-a", store, "verify", "--full")
    assert verify.returncode == 0 and "0 problem(s)" in verify.stdout, verify.stderr
    assert tree_state(root) == before  # only read: no write, touch, chmod or rename


def test_content_stored_twice_by_rmellipse_is_stored_once(rme_archive, tmp_path: Path) -> None:
    root, built = rme_archive
    theirs = {p.name for p in root.rglob("blobs/*/*")}
    copies = len(list(root.rglob("blobs/*/*")))
    assert copies > len(theirs)  # rmellipse keeps one copy per workspace and title
    store = init(tmp_path)
    assert run("-a", store, "import", str(root), "--from", "rmellipse").returncode == 0
    ours = {p.name for p in Path(store, "blobs").rglob("*") if p.is_file()}
    assert ours == theirs | {str(r.record_id.hexdigest) for r in _releases(store)}


def _releases(store: str) -> list[archive.Release]:
    with archive.get_interface(store) as arc:
        return [arc.get_release(name, version) for name in arc.names() for version in arc.versions(name)]


def test_everything_rmellipse_recorded_is_kept(rme_archive, tmp_path: Path) -> None:
    root, _ = rme_archive
    store = init(tmp_path)
    report = archive.import_rmellipse(root, store, progress=False)
    assert len(report.imported) == 6 and report.present == []
    with archive.get_interface(store) as arc:
        release = arc.resolve("metrology-group/line-scan", "1.0.0")
    kept = release.metadata["rmellipse"]
    assert kept["workspace"] == "Metrology Group" and kept["title_versionless"] == "Line Scan"
    assert kept["requirements"] == ["other-release-v1.0.0"] and kept["datasets"] == {"gains": {"path": "out/gains.csv"}}
    assert kept["workflow"]["nodes"]["calibrate"]["outputs"] == ["gains"]
    project = kept["project"]
    assert project["data/sweep.h5"]["/item/"] == "H5_File" and project["data/sweep.h5"]["/attrs/"] == {"site": "lab 2"}
    assert project["data/sweep.h5/sweep"] == {"/attrs/": {"unit": "V"}, "/item/": "H5_Group",
                                              "/path/": "data/sweep.h5/sweep"}
    assert project["data/sweep.h5/sweep/gains"]["/item/"] == "H5_DATASET"
    assert project["a.txt"]["/file-type/"] == "misc" and project["donn\u00e9es"]["/item/"] == "Directory"
    assert set(release.files) == {"a.txt", "empty", "donn\u00e9es/mesure 1.csv", "data/sweep.h5"}
    assert release.files["empty"].size == 0


def test_a_rerun_imports_nothing_new(rme_archive, tmp_path: Path) -> None:
    root, built = rme_archive
    store = init(tmp_path)
    first = run("-a", store, "--progress", "import", str(root), "--from", "rmellipse")
    assert first.returncode == 0 and "importing" in first.stderr  # the bar
    assert first.stderr.splitlines()[-1].startswith("imported "), first.stderr  # its summary
    blobs = sorted(Path(store, "blobs").rglob("*"))
    again = run("-a", store, "import", str(root), "--from", "rmellipse")
    assert again.returncode == 0 and again.stdout == f"nothing new to import: {len(built)} releases present already\n"
    assert sorted(Path(store, "blobs").rglob("*")) == blobs


def test_a_release_held_with_other_content_stops_the_import(rme_archive, tmp_path: Path) -> None:
    root, _ = rme_archive
    store = init(tmp_path)
    assert run("-a", store, "push", str(make_tree(tmp_path / "x", {"x": b"x"})), "gains", "0.1.0").returncode == 0
    with pytest.raises(ReleaseExistsError, match="gains 0.1.0 exists"):
        archive.import_rmellipse(root, store, progress=False)
    assert run("-a", store, "ls").stdout.split() == ["gains"]


# ------------------------------------------------------------------ damaged sources
def _damage(blob: Path, how: str) -> None:
    data = blob.read_bytes()
    if how == "flipped":
        blob.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    elif how == "truncated":
        blob.write_bytes(data[:-1])
    else:
        blob.unlink()


@pytest.mark.parametrize("how, says", [("flipped", "content hashes to"), ("truncated", "bytes, but the record says"),
                                       ("missing", "is missing")])
def test_a_damaged_blob_fails_the_import_and_nothing_is_imported(rme_archive, tmp_path: Path, how: str,
                                                                 says: str) -> None:
    root = shutil.copytree(rme_archive[0], tmp_path / "rme")
    blob = max((p for p in (root / "Metrology Group" / "calib" / "blobs").rglob("*") if p.is_file()),
               key=lambda p: (p.stat().st_size, p.name))
    _damage(blob, how)
    store = init(tmp_path)
    result = run("-a", store, "import", str(root), "--from", "rmellipse")
    one_line_error(result, 1, f"rmellipse blob Metrology Group/calib/blobs/{blob.name[:2]}/{blob.name}")
    assert says in result.stderr and "used by metrology-group/calib 1.0.0" in result.stderr
    assert "nothing was imported" in result.stderr
    assert run("-a", store, "ls").stdout == ""
    left = [p for top in ("blobs", "trash", "leases", "tmp") for p in Path(store, top).rglob("*") if p.is_file()]
    assert left == []  # what was stored before the damaged blob was read is taken back
    assert run("-a", store, "verify", "--full").returncode == 0


def test_not_an_rmellipse_archive(tmp_path: Path) -> None:
    store = init(tmp_path)
    one_line_error(run("-a", store, "import", str(tmp_path), "--from", "rmellipse"), 1,
                   "is not an rmellipse archive (it has no .rmearchive)")
    assert run("-a", store, "import", str(tmp_path), "--from", "dvc").returncode == 2


# ------------------------------------------------------------------ over SFTP, and rmellipse's get_interface
def test_import_from_sftp(rme_archive, sshd, ssh_key_home: Path, tmp_path: Path) -> None:  # noqa: F811
    root, built = rme_archive
    before = tree_state(root)
    store = init(tmp_path)
    done = run("-a", store, "import", sshd.url(root), "--from", "rmellipse")
    assert done.returncode == 0, done.stderr
    assert len(_releases(store)) == len(built)
    assert run("-a", store, "verify", "--full").returncode == 0
    assert tree_state(root) == before


def test_get_interface_takes_rmellipse_login_arguments(sshd, ssh_home: Path, password_user,  # noqa: F811
                                                       keyring_file: Path, tmp_path: Path) -> None:  # noqa: F811
    url = f"sftp://{sshd.host}:{sshd.port}/~/store"
    with archive.get_interface(url, password_user.name, password_user.password, create=True) as arc:
        arc.publish(make_tree(tmp_path / "src", {"f": b"1"}), "team/calib", "1.0.0", progress=False)
        assert password_user.password not in repr(arc) + arc.location
    with archive.get_interface(url, user=password_user.name, password=password_user.password) as arc:
        assert arc.names() == ["team/calib"]
    assert keyring.get_password(KEYRING_SERVICE, f"{password_user.name}@{sshd.host}") is None  # never stored
    with pytest.raises(InvalidInputError, match="names a login already"):
        archive.get_interface(f"sftp://someone@{sshd.host}:{sshd.port}/~/store", password_user.name, "x")


def test_get_interface_resolves_relative_paths_like_rmellipse(tmp_path: Path) -> None:
    init(tmp_path, "here")
    with archive.get_interface("here", resolve_relative_paths_to=tmp_path) as arc:
        assert arc.location == str(tmp_path / "here")


def test_two_workspaces_that_would_share_a_namespace_are_refused(rme_archive, tmp_path: Path) -> None:
    root = shutil.copytree(rme_archive[0], tmp_path / "rme")
    shutil.copytree(root / "Metrology Group", root / "metrology  group")
    store = init(tmp_path)
    one_line_error(run("-a", store, "import", str(root), "--from", "rmellipse"), 1,
                   "and metrology  group/")
    assert run("-a", store, "ls").stdout == ""


def test_a_failed_import_keeps_what_a_publish_in_flight_has_leased(rme_archive, tmp_path: Path) -> None:
    """A publish running meanwhile may have found a blob the import stored and be about to
    reference it (its lease says so): taking the import back leaves that blob in place."""
    root = shutil.copytree(rme_archive[0], tmp_path / "rme")
    blob = max((p for p in (root / "Metrology Group" / "calib" / "blobs").rglob("*") if p.is_file()),
               key=lambda p: (p.stat().st_size, p.name))
    _damage(blob, "flipped")
    store = init(tmp_path)
    alpha = hashlib.sha256(b"alpha").hexdigest()
    lease = Path(store, "leases", "inflight.json")
    lease.parent.mkdir()
    lease.write_text(json.dumps({"format": 1, "blobs": [f"sha256:{alpha}"]}))
    assert run("-a", store, "import", str(root), "--from", "rmellipse").returncode == 1
    assert [p.name for p in Path(store, "blobs").rglob("*") if p.is_file()] == [alpha]
