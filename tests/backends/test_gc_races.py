"""gc against a concurrent publish that reuses an old unreferenced blob, on every backend.

A blob left by a publish killed days ago is old and unreferenced: exactly what gc removes. A
new publish of the same content finds it stored and does not upload it. Each test below makes
gc run at one precise moment of such a publish (a hook fires after a chosen storage call), or
makes a publish run at one precise moment of gc, and checks that afterwards the release is
whole: every blob present and intact, and a pull gives the published bytes. The last test
races real threads for many rounds.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import pytest

import archive
from archive import layout
from archive.hashing import BlobId
from archive.interface import ArchiveInterface
from tests.conftest import make_tree
from tests.test_publish import snapshot

SIZE = 5000
OLD = 48 * 3600


class Hooked(ArchiveInterface):
    """A backend passed through, with a hook that may fire once after a chosen primitive call.

    Not a stand-in: every call reaches the real backend; the hook only chooses *when* another
    operation runs, to make one interleaving happen every time.
    """

    def __init__(self, inner: ArchiveInterface) -> None:
        super().__init__(inner.location)
        self.inner = inner
        self.seen = inner.seen
        self.atomic_moves = inner.atomic_moves
        self._hooks: list[tuple[str, Callable[[str], bool], Callable[[], None]]] = []

    def after(self, primitive: str, when: Callable[[str], bool], action: Callable[[], None]) -> None:
        """Run ``action`` once, right after the first ``primitive`` call whose key passes ``when``."""
        self._hooks.append((primitive, when, action))

    def _fire(self, primitive: str, key: str) -> None:
        for hook in list(self._hooks):
            name, when, action = hook
            if name == primitive and when(key):
                self._hooks.remove(hook)
                action()

    def stat_key(self, key):
        result = self.inner.stat_key(key)
        self._fire("stat_key", key)
        return result

    def open_key(self, key):
        return self.inner.open_key(key)

    def write_key(self, key, chunks, *, exclusive=False):
        self.inner.write_key(key, chunks, exclusive=exclusive)
        self._fire("write_key", key if isinstance(key, str) else "")

    def list_keys(self, prefix):
        result = self.inner.list_keys(prefix)
        self._fire("list_keys", prefix)
        return result

    def delete_key(self, key):
        self.inner.delete_key(key)

    def move_key(self, source, target):
        self.inner.move_key(source, target)
        self._fire("move_key", source)


@pytest.fixture(params=["folder", "sftp", "s3"])
def arc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterable[ArchiveInterface]:
    """An archive on each backend holding release 1.0.0 of one file of SIZE bytes."""
    store = tmp_path / "store"
    if request.param == "folder":
        location = str(store)
    elif request.param == "sftp":
        request.getfixturevalue("ssh_key_home")
        location = request.getfixturevalue("sshd").url(store)
    else:
        location = request.getfixturevalue("s3_env").location(request.getfixturevalue("s3_bucket"), "store")
    with archive.get_interface(location, create=True) as backend:
        backend.publish(make_tree(tmp_path / "v1", {"data.bin": b"1" * SIZE}), "calib", "1.0.0", progress=False)
        if request.param == "s3":
            from tests.backends.test_s3 import set_mtime

            backend.set_mtime = lambda key, mtime: set_mtime(request.getfixturevalue("s3_env"), backend.bucket,
                                                             backend, key, mtime)
        else:  # the same folder, seen from this machine
            backend.set_mtime = lambda key, mtime: os.utime(store / key, (mtime, mtime))
        yield backend


def orphan(arc: ArchiveInterface, data: bytes) -> BlobId:
    """Store ``data`` as a blob no release references, last touched two days ago (a killed publish)."""
    blob = BlobId.of_bytes(data)
    arc.write_key(layout.blob_key(blob), [data])
    arc.set_mtime(layout.blob_key(blob), time.time() - OLD)
    return blob


def folder_of(tmp_path: Path, data: bytes) -> Path:
    return make_tree(tmp_path / f"src-{BlobId.of_bytes(data).short}", {"data.bin": data})


def assert_whole(arc: ArchiveInterface, version: str, data: bytes, tmp_path: Path) -> None:
    report = arc.verify(full=True)
    assert report.ok, report.errors
    out = arc.download("calib", version, tmp_path / f"out-{version}", progress=False)
    assert snapshot(out) == {"data.bin": data}


def test_gc_between_the_publish_finding_a_blob_and_committing(arc: ArchiveInterface, tmp_path: Path) -> None:
    """The publish found the old blob stored and will not upload it; gc runs before the commit."""
    data = b"2" * SIZE  # the size of the latest release's file: hashed first, then looked up
    blob = orphan(arc, data)
    hooked = Hooked(arc)
    hooked.after("stat_key", lambda key: key == layout.blob_key(blob), lambda: arc.collect_garbage(grace_hours=1))
    hooked.publish(folder_of(tmp_path, data), "calib", "1.1.0", progress=False)
    assert not hooked._hooks, "the publish never looked the blob up"
    assert_whole(arc, "1.1.0", data, tmp_path)


def test_publish_after_gc_set_the_blob_aside(arc: ArchiveInterface, tmp_path: Path) -> None:
    """gc moved the blob aside before the publish looked for it: the publish uploads it again,
    and gc, reading the releases once more, keeps what the new release references."""
    data = b"3" * SIZE
    blob = orphan(arc, data)
    hooked = Hooked(arc)
    publish = lambda: arc.publish(folder_of(tmp_path, data), "calib", "1.1.0", progress=False)  # noqa: E731
    hooked.after("move_key", lambda key: key == layout.blob_key(blob), publish)
    report = hooked.collect_garbage(grace_hours=1)
    assert not hooked._hooks and layout.blob_key(blob) not in report.removed
    assert_whole(arc, "1.1.0", data, tmp_path)


def test_blob_stored_anew_while_gc_looks_at_it(arc: ArchiveInterface, tmp_path: Path) -> None:
    """gc saw the blob old; before it moves it, a publish of a new file writes the same content
    afresh: gc sees the fresh time after the move and puts it back."""
    data = b"4" * (SIZE + 1)  # a size the latest release lacks: a new file, written without asking
    blob = orphan(arc, data)
    hooked = Hooked(arc)
    publish = lambda: arc.publish(folder_of(tmp_path, data), "calib", "1.1.0", progress=False)  # noqa: E731
    hooked.after("stat_key", lambda key: key == layout.blob_key(blob), publish)
    hooked.collect_garbage(grace_hours=1)
    assert not hooked._hooks
    assert_whole(arc, "1.1.0", data, tmp_path)


class Killed(Exception):
    """Stands for a gc process killed at this point."""


def test_gc_killed_after_setting_aside_is_repaired_by_the_next_gc(arc: ArchiveInterface, tmp_path: Path) -> None:
    """A gc dies right after moving a blob that a publish in flight reuses: the release is
    committed without it; the next gc puts it back before it removes anything."""
    data = b"5" * SIZE
    blob = orphan(arc, data)
    dying = Hooked(arc)

    def raise_killed() -> None:
        raise Killed()

    dying.after("move_key", lambda key: key == layout.blob_key(blob), raise_killed)

    def gc_that_dies() -> None:
        with pytest.raises(Killed):
            dying.collect_garbage(grace_hours=1)

    publisher = Hooked(arc)
    publisher.after("stat_key", lambda key: key == layout.blob_key(blob), gc_that_dies)
    publisher.publish(folder_of(tmp_path, data), "calib", "1.1.0", progress=False)
    assert not arc.has_key(layout.blob_key(blob)) and not arc.verify().ok  # the damage the kill left
    report = arc.collect_garbage(grace_hours=1)
    assert layout.blob_key(blob) in report.restored
    assert_whole(arc, "1.1.0", data, tmp_path)


def test_gc_still_removes_what_nothing_references(arc: ArchiveInterface) -> None:
    blob = orphan(arc, b"6" * 10)
    report = arc.collect_garbage(grace_hours=1)
    assert report.removed == [layout.blob_key(blob)] and report.bytes_freed == 10
    assert not arc.has_key(layout.blob_key(blob)) and not arc.has_key(layout.trash_key(blob))


def test_racing_publishers_and_gc_threads(arc: ArchiveInterface, tmp_path: Path) -> None:
    """Publishers reuse old orphans while gc runs in a loop on another connection."""
    rounds = 12
    contents = [bytes([65 + i % 26]) * SIZE for i in range(rounds)]
    for data in contents:
        orphan(arc, data)
    folders = [folder_of(tmp_path, data) for data in contents]
    done = threading.Event()
    errors: list[BaseException] = []

    def gc_loop() -> None:
        with archive.get_interface(arc.location) as other:
            while not done.is_set():
                try:
                    other.collect_garbage(grace_hours=1)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return

    thread = threading.Thread(target=gc_loop)
    thread.start()
    try:
        for i, folder in enumerate(folders):
            arc.publish(folder, "calib", f"1.1.{i}", progress=False, jobs=2)
    finally:
        done.set()
        thread.join(timeout=120)
    assert not errors, errors
    for i, data in enumerate(contents):
        assert_whole(arc, f"1.1.{i}", data, tmp_path)


def test_a_resumed_upload_is_as_new_as_its_write(tmp_path: Path, sshd, ssh_key_home) -> None:
    """An SFTP upload that takes over a whole partial file of a process killed days ago writes
    no byte; the blob it makes must still look new, or gc would take it for abandoned."""
    import uuid

    store = tmp_path / "store"
    data = os.urandom(3 * 1024 * 1024)  # large enough to be worth resuming
    blob = BlobId.of_bytes(data)
    with archive.get_interface(sshd.url(store), create=True) as arc:
        partial = store / layout.TMP_DIR / f"{blob.hexdigest}.{uuid.uuid4().hex}.part"
        partial.parent.mkdir(exist_ok=True)
        partial.write_bytes(data)
        os.utime(partial, (time.time() - OLD, time.time() - OLD))
        arc.write_key(layout.blob_key(blob), [data])
        assert not partial.exists()
        assert time.time() - arc.stat_key(layout.blob_key(blob)).mtime < 3600


def test_verify_names_and_repairs_a_blob_an_interrupted_gc_left_aside(arc: ArchiveInterface) -> None:
    blob = arc.resolve("calib").files["data.bin"].blob
    arc.move_key(layout.blob_key(blob), layout.trash_key(blob))  # what a gc killed mid-way leaves
    report = arc.verify()
    assert report.errors == [f"blob {blob.short} is missing: an interrupted gc left it in {layout.trash_key(blob)}"
                             " (verify --repair puts it back)"]
    repaired = arc.verify(repair=True)
    assert repaired.ok and any("repaired" in w for w in repaired.warnings)
    assert arc.verify(full=True).ok
