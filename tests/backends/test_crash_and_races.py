"""Promises under force, on every backend: killed publishers and racing publishers.

Real processes are killed with SIGKILL at seeded random moments of a publish; real processes
race to publish. After each, the archive must verify, show no partial release, and a retry
must complete. ``ARCHIVE_KILL_RUNS`` (default 50 per backend; 400 under ``-m slow``) and
``ARCHIVE_KILL_SEED`` set the number of runs and the seed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import archive
from archive.index import versions_in_index
from tests.conftest import make_tree
from tests.test_publish import snapshot

BACKENDS = ["folder", "sftp", "s3"]
CHILD = r"""
import json, sys, time
import archive
from archive.errors import ReleaseExistsError
location, folder, name, version = sys.argv[1:5]
arc = archive.get_interface(location)
print("ready", flush=True)
sys.stdin.readline()
start = time.perf_counter()
try:
    arc.publish(folder, name, version, {"message": "force"}, progress=False, jobs=2)
    outcome = "published"
except ReleaseExistsError:
    outcome = "exists"
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start}), flush=True)
"""


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An initialized archive on each backend, given as the location string a user would type."""
    store = tmp_path / "store"
    if request.param == "folder":
        url = str(store)
    elif request.param == "sftp":
        request.getfixturevalue("ssh_key_home")
        url = request.getfixturevalue("sshd").url(store)
    else:
        url = request.getfixturevalue("s3_env").location(request.getfixturevalue("s3_bucket"), "store")
    archive.get_interface(url, create=True).close()
    return url


def start_publisher(location: str, folder: Path, name: str, version: str) -> subprocess.Popen:
    """A publisher process, imported and connected, waiting for a line on stdin to start."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, location, str(folder), name, version],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def finish(proc: subprocess.Popen) -> dict:
    import json

    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def data_folder(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    # 700,000 bytes: over SFTP's BULK_BYTES, so a kill also lands between a large file's upload
    # and its sync on another session
    files = {f"part{i // 8}/f{i}.bin": rng.randbytes(rng.choice([0, 10, 4096, 300_000, 700_000]))
             for i in range(24)}
    files["dup/copy.bin"] = files["part0/f1.bin"]
    return make_tree(root, files)


def assert_sound(arc: archive.ArchiveInterface, name: str, expected: Path | None, out: Path) -> None:
    """The archive verifies, and the release is either absent or complete and exact."""
    report = arc.verify(full=True)
    assert report.ok, report.errors
    versions = arc.versions(name)
    assert versions in ([], ["1.0.0"])
    if versions and expected is not None:
        assert snapshot(arc.download(name, "1.0.0", out, progress=False)) == snapshot(expected)


def kill_runs(request: pytest.FixtureRequest) -> int:
    # Each run verifies the whole archive, so a run costs more the more runs came before; on S3
    # (moto, a Python server) 50 runs take minutes, hence fewer by default there.
    default = 400 if request.config.getoption("-m") == "slow" else 50
    if request.node.callspec.params.get("location") == "s3":
        default //= 4
    return int(os.environ.get("ARCHIVE_KILL_RUNS", default))


def timed_publish(location: str, folder: Path, name: str) -> float:
    """Seconds a publisher process takes to publish ``folder`` as ``name`` 1.0.0 once told to go."""
    proc = start_publisher(location, folder, name, "1.0.0")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return finish(proc)["seconds"]


def test_killed_publisher_never_leaves_a_partial_release(location: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    seed = int(os.environ.get("ARCHIVE_KILL_SEED", "20261124"))
    rng = random.Random(seed)
    duration = min(timed_publish(location, data_folder(tmp_path / f"timing{i}", seed - 1 - i), f"timing{i}")
                   for i in range(2))  # the first is cold (imports, folders made): kills aim at a warm one
    tally = {"killed mid-publish": 0, "finished before the kill": 0, "release visible after kill": 0}
    with archive.get_interface(location) as arc:
        for run in range(kill_runs(request)):
            name = f"kill{run}"
            folder = data_folder(tmp_path / f"data{run}", seed + run)  # new blobs: a full publish each time
            proc = start_publisher(location, folder, name, "1.0.0")
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(rng.uniform(0, duration))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            tally["killed mid-publish" if proc.returncode == -signal.SIGKILL else "finished before the kill"] += 1
            tally["release visible after kill"] += bool(arc.versions(name))
            assert_sound(arc, name, folder, tmp_path / f"out{run}")
            arc.publish(folder, name, "1.0.0", {"message": "force"}, progress=False)
            assert_sound(arc, name, folder, tmp_path / f"again{run}")
    backend = location.split("://", 1)[0] if "://" in location else "folder"
    print(f"\nkill test ({backend}): seed {seed}, publish {duration * 1000:.0f} ms, {tally}")
    # Enough kills must land mid-publish for the test to mean something. How many do depends on
    # how long this publish takes next to the first, cold one timed above (20 to 50 of 50 seen).
    assert tally["killed mid-publish"] >= kill_runs(request) // 4, tally


def test_racing_publishers_of_one_version_have_one_winner(location: str, tmp_path: Path) -> None:
    folders = [make_tree(tmp_path / f"src{i}", {"data.txt": f"content {i}".encode(), "same.txt": b"s"})
               for i in range(8)]
    procs = [start_publisher(location, folder, "race", "1.0.0") for folder in folders]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outcomes = [finish(proc)["outcome"] for proc in procs]
    assert sorted(outcomes) == ["exists"] * 7 + ["published"]
    winner = folders[outcomes.index("published")]
    with archive.get_interface(location) as arc:
        assert_sound(arc, "race", winner, tmp_path / "out")
        assert versions_in_index(arc, "race") == ["1.0.0"]


def test_racing_publishers_of_many_versions_all_land(location: str, tmp_path: Path) -> None:
    folder = make_tree(tmp_path / "src", {"data.txt": b"shared content"})
    versions = [f"1.{i}.0" for i in range(8)]
    procs = [start_publisher(location, folder, "many", version) for version in versions]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    assert [finish(proc)["outcome"] for proc in procs] == ["published"] * 8
    with archive.get_interface(location) as arc:
        assert sorted(arc.versions("many")) == sorted(versions)
        assert sorted(versions_in_index(arc, "many")) == sorted(versions)
        assert arc.verify().ok
