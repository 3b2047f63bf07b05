"""The behavioural contract every backend passes, written once.

A backend's test module subclasses :class:`BackendContract` and provides an ``arc`` fixture
that yields an initialized, empty archive on that backend. Everything here goes through the
public interface, so a backend that passes can serve every feature of the archive.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

import archive
from archive import layout
from archive.errors import (IntegrityError, KeyExistsError, KeyNotFoundError, ReleaseExistsError,
                            ReleaseNotFoundError, UnsafeObjectError)
from archive.hashing import BlobId, HashingChunks
from archive.interface import ArchiveInterface, KeyInfo
from tests.conftest import make_tree


class BackendContract:
    """Subclass and provide an ``arc`` fixture (an empty, initialized archive)."""

    # ------------------------------------------------------------- primitives
    def test_write_then_read_round_trip(self, arc: ArchiveInterface) -> None:
        arc.write_key("blobs/sha256/ab/x", [b"hello ", b"world"])
        with arc.open_key("blobs/sha256/ab/x") as stream:
            assert stream.read() == b"hello world"
        assert arc.stat_key("blobs/sha256/ab/x").size == 11

    def test_write_replaces_unless_exclusive(self, arc: ArchiveInterface) -> None:
        arc.write_key("releases/n/idx", [b"one"])
        arc.write_key("releases/n/idx", [b"two"])
        assert arc.read_key("releases/n/idx", 100) == b"two"
        with pytest.raises(KeyExistsError):
            arc.write_key("releases/n/idx", [b"three"], exclusive=True)
        assert arc.read_key("releases/n/idx", 100) == b"two"

    def test_exclusive_write_creates(self, arc: ArchiveInterface) -> None:
        arc.write_key("releases/n/1.0.0", [b"ptr"], exclusive=True)
        assert arc.read_key("releases/n/1.0.0", 100) == b"ptr"

    def test_batched_writes_exist_after_a_flush_and_when_the_block_ends(self, arc: ArchiveInterface) -> None:
        with arc.batched_writes():
            arc.write_key("blobs/sha256/ab/one", [b"one"])
            arc.flush_writes()
            assert arc.read_key("blobs/sha256/ab/one", 10) == b"one"
            arc.write_key("blobs/sha256/ab/two", [b"two"])
            arc.write_key("releases/n/1.0.0", [b"ptr"], exclusive=True)  # flushes what came before
            assert arc.read_key("blobs/sha256/ab/two", 10) == b"two"
            arc.write_key("blobs/sha256/cd/three", [b"three"])
        assert arc.read_key("blobs/sha256/cd/three", 10) == b"three"
        assert sorted(arc.list_keys("blobs/sha256/ab")) == ["one", "two"]

    # ------------------------------------------------- read_keys (many at once)

    def test_each_key_in_order_with_its_own_error(self, arc: ArchiveInterface) -> None:
        stored = _written_keys(arc, {"blobs/sha256/ab/one": b"one", "blobs/sha256/cd/empty": b"",
                                "blobs/sha256/ab/long": b"x" * 100, "releases/n/1.0.0": b"pointer"})
        asked = [("blobs/sha256/ab/one", 3), ("blobs/sha256/00/missing", 10), ("blobs/sha256/cd/empty", 0),
                 ("blobs/sha256/ab/long", 99), ("releases/n/1.0.0", 1000), ("blobs/sha256/ab/one", 3)]
        got = list(arc.read_keys(asked))
        assert [key for key, _ in got] == [key for key, _ in asked]
        assert got[0][1] == got[5][1] == stored["blobs/sha256/ab/one"]
        assert isinstance(got[1][1], KeyNotFoundError)
        assert got[2][1] == b""
        assert isinstance(got[3][1], IntegrityError) and "over the 99 byte limit" in str(got[3][1])
        assert got[4][1] == b"pointer"

    def test_many_keys_across_groups(self, arc: ArchiveInterface) -> None:
        stored = _written_keys(arc, {f"blobs/sha256/{i % 7:02x}/k{i}": os.urandom(i % 300)
                                for i in range(2 * 64 + 5)})
        got = list(arc.read_keys([(key, len(data)) for key, data in stored.items()]))
        assert got == list(stored.items())

    def test_nothing_asked_gives_nothing(self, arc: ArchiveInterface) -> None:
        assert list(arc.read_keys([])) == []

    def test_missing_key_raises_not_found(self, arc: ArchiveInterface) -> None:
        with pytest.raises(KeyNotFoundError):
            arc.stat_key("blobs/sha256/00/missing")
        with pytest.raises(KeyNotFoundError):
            with arc.open_key("blobs/sha256/00/missing"):
                pass
        with pytest.raises(KeyNotFoundError):
            arc.delete_key("blobs/sha256/00/missing")
        assert arc.list_keys("no/such/prefix") == []

    def test_failed_write_leaves_nothing(self, arc: ArchiveInterface) -> None:
        def failing():
            yield b"partial data"
            raise IntegrityError("boom")

        with pytest.raises(IntegrityError):
            arc.write_key("blobs/sha256/cd/y", failing())
        assert not arc.has_key("blobs/sha256/cd/y")
        assert arc.list_keys(layout.TMP_DIR) == []

    def test_deferred_key_is_named_after_the_last_chunk(self, arc: ArchiveInterface) -> None:
        """A key given as a function is asked for once every chunk was written (a blob named by
        the hash of what went by), in a folder that need not exist yet."""
        hashing = HashingChunks(iter([b"named ", b"at the end"]))
        asked: list[int] = []

        def key() -> str:
            asked.append(hashing.size)
            return layout.blob_key(hashing.blob_id)

        arc.write_key(key, hashing)
        assert asked == [16]
        assert arc.read_key(layout.blob_key(BlobId.of_bytes(b"named at the end")), 100) == b"named at the end"
        assert arc.list_keys(layout.TMP_DIR) == []

    def test_failed_deferred_write_leaves_nothing(self, arc: ArchiveInterface) -> None:
        def failing():
            yield b"x" * 3_000_000
            raise IntegrityError("boom")

        with pytest.raises(IntegrityError):
            arc.write_key(lambda: "blobs/sha256/cd/never", failing())
        assert not arc.has_key("blobs/sha256/cd/never")
        assert arc.list_keys(layout.TMP_DIR) == []

    def test_listing_shows_children_not_temporaries(self, arc: ArchiveInterface) -> None:
        arc.write_key("releases/a/1.0.0", [b"x"])
        arc.write_key("releases/b/2.0.0", [b"y"])
        assert sorted(arc.list_keys("releases")) == ["a", "b"]
        assert arc.list_keys("releases/a") == ["1.0.0"]
        assert arc.list_keys(layout.TMP_DIR) == []

    def test_delete_removes(self, arc: ArchiveInterface) -> None:
        arc.write_key("blobs/sha256/ef/z", [b"z"])
        arc.delete_key("blobs/sha256/ef/z")
        assert not arc.has_key("blobs/sha256/ef/z")

    def on_disk(self, arc: ArchiveInterface, key: str) -> Path:
        """The file that holds ``key`` on this machine (every backend tested here stores locally:
        the SFTP server runs on the same machine), so tests can arrange what a storage holds."""
        return Path(str(arc.root), *key.split("/"))  # type: ignore[attr-defined]

    def test_move_renames_and_keeps_mtime(self, arc: ArchiveInterface) -> None:
        arc.write_key("blobs/sha256/ab/moved", [b"content"])
        os.utime(self.on_disk(arc, "blobs/sha256/ab/moved"), (1_000_000_000, 1_000_000_000))
        arc.move_key("blobs/sha256/ab/moved", "blobs/sha256/ab/moved.aside")
        assert not arc.has_key("blobs/sha256/ab/moved")
        assert arc.read_key("blobs/sha256/ab/moved.aside", 100) == b"content"
        assert arc.stat_key("blobs/sha256/ab/moved.aside") == KeyInfo(7, 1_000_000_000.0)

    def test_move_replaces_the_target(self, arc: ArchiveInterface) -> None:
        arc.write_key("releases/n/a", [b"new"])
        arc.write_key("releases/n/b", [b"old target"])
        arc.move_key("releases/n/a", "releases/n/b")
        assert arc.read_key("releases/n/b", 100) == b"new"
        assert arc.list_keys("releases/n") == ["b"]

    def test_move_creates_target_folders(self, arc: ArchiveInterface) -> None:
        arc.write_key("blobs/sha256/cd/x", [b"x"])
        arc.move_key("blobs/sha256/cd/x", "trash/deep/er/x")
        assert arc.read_key("trash/deep/er/x", 10) == b"x"
        arc.write_key("blobs/sha256/cd/y", [b"y"])
        import shutil

        shutil.rmtree(self.on_disk(arc, "trash"))  # removed behind the backend's back: made again
        arc.move_key("blobs/sha256/cd/y", "trash/deep/er/y")
        assert arc.read_key("trash/deep/er/y", 10) == b"y"

    def test_move_of_a_missing_source_raises_not_found(self, arc: ArchiveInterface) -> None:
        arc.write_key("releases/n/b", [b"target"])
        for target in ("releases/n/b", "no/such/folder/t"):
            with pytest.raises(KeyNotFoundError) as info:
                arc.move_key("releases/n/missing", target)
            assert info.value.key == "releases/n/missing"
        assert arc.read_key("releases/n/b", 100) == b"target"

    def test_concurrent_writes_of_one_blob(self, arc: ArchiveInterface) -> None:
        data = b"same content" * 10_000
        key = layout.blob_key(BlobId.of_bytes(data))
        errors: list[BaseException] = []

        def put() -> None:
            try:
                arc.write_key(key, [data[:50_000], data[50_000:]])
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=put) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert arc.read_key(key, len(data)) == data
        assert arc.list_keys(layout.TMP_DIR) == []

    def test_exclusive_race_has_one_winner(self, arc: ArchiveInterface) -> None:
        outcomes: list[str] = []

        def create(i: int) -> None:
            try:
                arc.write_key("releases/r/1.0.0", [f"writer {i}".encode()], exclusive=True)
                outcomes.append("won")
            except KeyExistsError:
                outcomes.append("lost")

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("won") == 1 and outcomes.count("lost") == 7

    # ------------------------------------------------------------- storage someone else controls
    def test_a_link_in_place_of_an_object_is_never_followed(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        outside = tmp_path / "outside.txt"
        outside.write_bytes(b"not the archive's")
        key = "releases/n/1.0.0"
        arc.write_key(key, [b"pointer"])
        on_disk = self.on_disk(arc, key)
        on_disk.unlink()
        on_disk.symlink_to(outside)
        refused = f"{key} is a symbolic link inside the archive; refusing to follow it"
        for action in (lambda: arc.stat_key(key), lambda: arc.read_key(key, 100), lambda: arc.delete_key(key),
                       lambda: arc.move_key(key, "releases/n/moved")):
            with pytest.raises(UnsafeObjectError, match=refused):
                action()
        assert on_disk.is_symlink() and not arc.has_key("releases/n/moved")
        with pytest.raises(KeyExistsError):
            arc.write_key(key, [b"create-only"], exclusive=True)
        arc.write_key(key, [b"replaced"])  # replaces the link itself, never writes through it
        assert not on_disk.is_symlink() and arc.read_key(key, 100) == b"replaced"
        assert outside.read_bytes() == b"not the archive's"

    @pytest.mark.parametrize("folder", ["releases/n", layout.TMP_DIR, "blobs"])
    def test_a_link_in_place_of_a_folder_is_never_followed(self, arc: ArchiveInterface, tmp_path: Path,
                                                           folder: str) -> None:
        import shutil

        outside = make_tree(tmp_path / "outside", {"1.0.0": b"old", "x.part": b"x"})
        with archive.get_interface(arc.location) as earlier:  # the archive as another process left it
            earlier.write_key("releases/n/1.0.0", [b"pointer"])
            earlier.write_key("blobs/sha256/ab/x", [b"x"])
            earlier.write_key("releases/m/1.0.0", [b"m"])
        on_disk = self.on_disk(arc, folder)
        shutil.rmtree(on_disk, ignore_errors=True)
        on_disk.symlink_to(outside)
        refused = f"{folder} is a symbolic link inside the archive; refusing to follow it"
        key = f"{folder}/1.0.0" if folder != "blobs" else "blobs/sha256/ab/x"
        with archive.get_interface(arc.location) as later:  # a process started after the link was made
            actions = [lambda: later.stat_key(key), lambda: later.read_key(key, 100),
                       lambda: later.delete_key(key), lambda: later.list_keys(folder),
                       lambda: later.write_key(f"{folder}/2.0.0", [b"new"]),
                       lambda: later.write_key(f"{folder}/3.0.0", [b"new"], exclusive=True),
                       lambda: later.move_key("releases/m/1.0.0", f"{folder}/4.0.0")]
            for action in actions:
                with pytest.raises(UnsafeObjectError, match=refused):
                    action()
        assert sorted(p.name for p in outside.iterdir()) == ["1.0.0", "x.part"]
        assert (outside / "1.0.0").read_bytes() == b"old"

    def test_a_fifo_in_place_of_an_object_is_refused_without_blocking(self, arc: ArchiveInterface) -> None:
        key = "blobs/sha256/ab/fifo"
        arc.write_key("blobs/sha256/ab/other", [b"x"])
        os.mkfifo(self.on_disk(arc, key))
        refused = f"{key} is a FIFO inside the archive, not a file; refusing to use it"
        for action in (lambda: arc.stat_key(key), lambda: arc.read_key(key, 100), lambda: arc.delete_key(key),
                       lambda: arc.move_key(key, "blobs/sha256/ab/moved")):
            with pytest.raises(UnsafeObjectError, match=refused):
                _within_seconds(action, self.on_disk(arc, key))

    def test_a_folder_in_place_of_an_object_is_refused(self, arc: ArchiveInterface) -> None:
        key = "releases/n/1.0.0"
        self.on_disk(arc, key).mkdir(parents=True)
        for action in (lambda: arc.stat_key(key), lambda: arc.read_key(key, 100), lambda: arc.delete_key(key)):
            with pytest.raises(UnsafeObjectError, match=f"{key} is a folder inside the archive, not a file"):
                action()
        assert arc.list_keys("releases/n") == ["1.0.0"]  # listed: folders are listed, and refused when used

    def test_a_file_in_place_of_a_folder_is_refused(self, arc: ArchiveInterface) -> None:
        arc.write_key("releases/n", [b"a file"])
        with pytest.raises(UnsafeObjectError, match="releases/n is a file inside the archive, not a folder"):
            arc.read_key("releases/n/1.0.0", 100)
        with pytest.raises(UnsafeObjectError, match="releases/n is a file inside the archive, not a folder"):
            arc.write_key("releases/n/1.0.0", [b"p"])

    def test_a_key_never_leads_outside_the_root(self, arc: ArchiveInterface) -> None:
        from archive.errors import InvalidInputError

        for key in ("../outside", "releases/../../outside", "/etc/passwd", "releases//x", "./archive.json"):
            for action in (lambda: arc.stat_key(key), lambda: arc.read_key(key, 10),
                           lambda: arc.write_key(key, [b"x"]), lambda: arc.delete_key(key)):
                with pytest.raises(InvalidInputError, match="is not a key inside the archive"):
                    action()
        assert not (self.on_disk(arc, "").parent / "outside").exists()

    def test_names_that_are_not_utf8_are_skipped_in_listings(self, arc: ArchiveInterface,
                                                              caplog: pytest.LogCaptureFixture) -> None:
        arc.write_key("releases/good/1.0.0", [b"p"])
        folder = os.fsencode(self.on_disk(arc, "releases"))
        os.mkdir(folder + b"/caf\xe9")
        with open(folder + b"/good/\xff\xfe", "wb"):
            pass
        assert arc.list_keys("releases") == ["good"]
        assert arc.list_keys("releases/good") == ["1.0.0"]
        assert "skipping a name that is not UTF-8" in caplog.text

    # ------------------------------------------------------------- the archive above them
    def test_publish_and_download_round_trip(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        files = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)) * 1000, "sub/deeper/c": b""}
        src = make_tree(tmp_path / "src", files)
        release = arc.publish(src, "demo", "1.0.0", {"message": "first"}, progress=False)
        assert set(release.files) == set(files)
        out = arc.download("demo", "^1", tmp_path / "out", progress=False)
        assert {p: (out / p).read_bytes() for p in files} == files

    def test_open_of_one_file_fetches_only_its_blob(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        """``open`` of one file of a 200-file release reads, of all the blobs, its record and
        that file's blob (counted at the backend); a second ``open`` reads no content blob."""
        from tests.counting import Counting

        files = {f"part/{i:03}.csv": f"row,{i}\n".encode() * (i + 1) for i in range(200)}
        release = arc.publish(make_tree(tmp_path / "src", files), "demo", "1.0.0", progress=False)
        counting = Counting(arc)
        with counting.open("demo", "part/123.csv", "^1") as stream:
            assert stream.read() == files["part/123.csv"]
        assert counting.blobs_opened(besides=[release.record_id]) == [
            layout.blob_key(release.files["part/123.csv"].blob)]
        counting.opened.clear()
        with counting.open("demo", "part/123.csv", encoding="utf-8") as text:
            assert text.read() == files["part/123.csv"].decode()
        assert counting.blobs_opened(besides=[release.record_id]) == []

    def test_include_fetches_only_matching_blobs(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        from tests.counting import Counting

        files = {"raw/a.bin": b"a" * 100, "raw/b.bin": b"b" * 200, "gains.csv": b"g,1\n", "notes/x.csv": b"x,2\n"}
        release = arc.publish(make_tree(tmp_path / "src", files), "demo", "1.0.0", progress=False)
        counting = Counting(arc)
        out = counting.download("demo", "1.0.0", tmp_path / "out", include=["*.csv"], exclude=["notes/"],
                                progress=False)
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                      and ".archive" not in p.parts) == ["gains.csv"]
        assert counting.blobs_opened(besides=[release.record_id]) == [
            layout.blob_key(release.files["gains.csv"].blob)]

    def test_new_release_is_all_or_nothing(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        if arc.read_only:
            pytest.skip("a read-only archive publishes nothing")
        src = make_tree(tmp_path / "raw", {"one.bin": b"1" * 10, "sub/two.bin": b"2" * 20})
        with pytest.raises(RuntimeError, match="job failed"):
            with arc.new_release("built", "1.0.0", metadata={"message": "x"}) as rel:
                rel.add_dir(src, prefix="raw")
                rel.add_bytes(b"new content", as_="made.txt")
                raise RuntimeError("job failed")
        assert arc.versions("built") == [] and arc.list_keys("blobs/sha256") == []
        with arc.new_release("built", "1.0.0", metadata={"message": "x"}) as rel:
            rel.add(src / "one.bin", as_="top/one.bin")
            rel.add_dir(src, prefix="raw")
            rel.add_bytes(b"#!/bin/sh\necho hi\n", as_="run.sh")
        got = arc.resolve("built", "1.0.0")
        assert got == rel.release and set(got.files) == {"top/one.bin", "raw/one.bin", "raw/sub/two.bin", "run.sh"}
        assert got.files["run.sh"].media_type == "text/x-sh" and arc.verify("built").ok

    def test_download_without_the_cache(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        """``use_cache=False`` writes each file straight from the archive and leaves no blob in
        the cache; a corrupt blob still never reaches the destination."""
        from archive.cache import default_cache
        from archive.errors import IntegrityError

        files = {"a.txt": b"alpha", "big.bin": bytes(range(256)) * 12_000}
        arc.publish(make_tree(tmp_path / "src", files), "demo", "1.0.0", progress=False)
        out = arc.download("demo", "1.0.0", tmp_path / "out", use_cache=False, progress=False)
        assert {p: (out / p).read_bytes() for p in files} == files
        assert [p for p in (default_cache().root / "blobs").rglob("*") if p.is_file()] == []
        arc.write_key(layout.blob_key(BlobId.of_bytes(files["a.txt"])), [b"alphA"])  # same size, other bytes
        with pytest.raises(IntegrityError, match="content hashes to"):
            arc.download("demo", "1.0.0", tmp_path / "out2", use_cache=False, progress=False)
        assert not (tmp_path / "out2" / "a.txt").exists()
        assert [p.name for p in (tmp_path / "out2").rglob("*") if p.name.endswith(".archive-part")] == []

    def test_versions_names_and_resolve(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        src = make_tree(tmp_path / "src", {"f": b"1"})
        for version in ("1.0.0", "1.2.0", "2.0.0-rc.1", "0.9.0"):
            arc.publish(src, "demo", version, progress=False)
        assert arc.names() == ["demo"]
        assert arc.versions("demo") == ["2.0.0-rc.1", "1.2.0", "1.0.0", "0.9.0"]
        assert arc.resolve("demo", "^1").version == "1.2.0"
        assert arc.resolve("demo", "*").version == "1.2.0"
        assert arc.resolve("demo", "*", include_prerelease=True).version == "2.0.0-rc.1"

    def test_namespaced_names(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        """``NAMESPACE/NAME`` works like a plain name, never clashes with one (not even with a
        plain name equal to the namespace whose versions look like names), and turns the archive
        into format 2 so that an older reader refuses it rather than missing those releases."""
        one, two = make_tree(tmp_path / "one", {"f": b"1"}), make_tree(tmp_path / "two", {"g": b"22"})
        arc.publish(one, "team", "1.0.0", progress=False)
        assert _marker_version(arc) == 1
        for version in ("1.0.0", "1.2.0"):
            arc.publish(two, "team/calib", version, progress=False)
        arc.publish(one, "team/1.0.0", "3.0.0", progress=False)
        arc.publish(one, "other/calib", "0.1.0", progress=False)
        assert _marker_version(arc) == 2
        assert arc.names() == ["other/calib", "team", "team/1.0.0", "team/calib"]
        assert arc.names("team") == ["team/1.0.0", "team/calib"]
        assert arc.names("nobody") == []
        assert arc.versions("team") == ["1.0.0"]
        assert arc.versions("team/calib") == ["1.2.0", "1.0.0"]
        assert arc.resolve("team/calib", "~1.0").version == "1.0.0"
        assert arc.resolve("team/1.0.0").files.keys() == {"f"}
        out = arc.download("team/calib", "^1", tmp_path / "out", progress=False)
        assert (out / "g").read_bytes() == b"22"
        assert arc.verify(full=True, progress=False).ok
        assert arc.collect_garbage(grace_hours=0).removed == []
        assert arc.verify(full=True, progress=False).releases == 5

    def test_release_is_never_overwritten(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        first = arc.publish(make_tree(tmp_path / "a", {"f": b"one"}), "demo", "1.0.0", progress=False)
        with pytest.raises(ReleaseExistsError):
            arc.publish(make_tree(tmp_path / "b", {"f": b"two"}), "demo", "1.0.0", progress=False)
        assert arc.resolve("demo", "1.0.0").record_id == first.record_id

    def test_missing_release(self, arc: ArchiveInterface) -> None:
        with pytest.raises(ReleaseNotFoundError):
            arc.resolve("nothing", "*")

    # ------------------------------------------------------------- workflows (issue 13)
    def test_yank_lock_and_sync(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        """A yanked version is skipped by a range, served exactly and to a lock; a lock whose
        record id differs from the archive's is refused before anything is written."""
        from archive.lock import Lock, LockEntry, make_lock, write_lock
        from archive.yank import history, unyank, yank

        for version in ("1.2.2", "1.2.3"):
            arc.publish(make_tree(tmp_path / version, {"v": version.encode()}), "calib", version, progress=False)
        yank(arc, "calib", "1.2.3", "wrong", "ann")
        assert arc.resolve("calib", "^1").version == "1.2.2"
        assert arc.resolve("calib", "1.2.3").version == "1.2.3"
        pinned = Lock((LockEntry("calib", "1.2.3", "1.2.3", arc.release_id("calib", "1.2.3"), arc.location),))
        assert (arc.sync(pinned, tmp_path / "out")["calib"] / "v").read_bytes() == b"1.2.3"
        assert make_lock(arc, ["calib@^1"]).entries[0].version == "1.2.2"
        tampered = write_lock(Lock((LockEntry("calib", "^1", "1.2.2", BlobId("0" * 64), arc.location),)),
                              tmp_path / "archive.lock")
        with pytest.raises(IntegrityError, match="lock pins"):
            arc.sync(tampered, tmp_path / "out2")
        assert not (tmp_path / "out2").exists()
        unyank(arc, "calib", "1.2.3", "right after all", "bob")
        assert arc.resolve("calib", "^1").version == "1.2.3"
        assert [m.action for m in history(arc, "calib", "1.2.3")] == ["yank", "unyank"]

    def test_offline_view_answers_from_the_cache(self, arc: ArchiveInterface, tmp_path: Path) -> None:
        """Records read from this backend are kept, and the offline view resolves and pulls
        from them and the cache's blobs alone; a version never read is not there."""
        from archive.cache import default_cache
        from archive.errors import NoMatchingVersionError
        from archive.offline import KnownReleases, open_offline

        for version in ("1.0.0", "1.1.0"):
            arc.publish(make_tree(tmp_path / version, {"v": version.encode()}), "calib", version, progress=False)
        arc.known = arc.known or KnownReleases(default_cache())
        arc.download("calib", "1.0.0", progress=False)  # into the cache
        offline = open_offline(arc.location, "test")
        assert offline.versions("calib") == ["1.0.0"]
        assert (offline.download("calib", "^1", tmp_path / "out", progress=False) / "v").read_bytes() == b"1.0.0"
        with pytest.raises(NoMatchingVersionError, match="offline"):
            offline.resolve("calib", "1.1.0")


def _marker_version(arc: ArchiveInterface) -> int:
    return json.loads(arc.read_key(layout.MARKER_KEY, 4096))["version"]


def _within_seconds(action, fifo: Path, seconds: float = 10.0) -> None:
    """Run ``action``; fail if it blocks (a reader waiting on ``fifo`` is then let go, so the
    suite fails instead of hanging). Whatever ``action`` raises is raised here."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:  # handed to the test below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _release_readers(fifo, thread)
        pytest.fail(f"blocked on the FIFO {fifo} for {seconds} s")
    if outcome[0] is not None:
        raise outcome[0]


def _release_readers(fifo: Path, thread: threading.Thread) -> None:
    """Open ``fifo`` for writing (and close it) until the blocked thread is done."""
    import time

    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader has it open yet
            time.sleep(0.05)
        thread.join(0.1)


def _written_keys(arc: ArchiveInterface, contents: dict[str, bytes]) -> dict[str, bytes]:
    for key, data in contents.items():
        arc.write_key(key, [data])
    return contents
