"""The S3 backend against a real S3 server (moto's, tests/s3d.py): the shared contract, then
what only S3 has: conditional writes, multipart transfers, retries, credentials, the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import archive
from archive import layout
from archive.backends.s3 import MTIME_FIELD, S3Archive
from archive.errors import KeyNotFoundError
from archive.interface import KeyInfo
from tests.backends.conformance import BackendContract
from tests.s3d import S3Server, s3_bucket, s3_env, s3_server  # noqa: F401


def set_mtime(server: S3Server, bucket: str, arc: S3Archive, key: str, mtime: float) -> None:
    """Give the object at ``key`` another write time, the way another process's write would."""
    name = arc.object_key(key)
    server.client().copy_object(Bucket=bucket, Key=name, CopySource={"Bucket": bucket, "Key": name},
                                Metadata={MTIME_FIELD: repr(mtime)}, MetadataDirective="REPLACE")


class TestS3Contract(BackendContract):
    # S3 has no symbolic links, FIFOs, devices or folders: a key names an object or nothing, and
    # "releases/n" and "releases/n/1.0.0" are two unrelated keys, so none of these can arise (the
    # data is verified against its hash above the backend anyway). Object names are UTF-8 by the
    # S3 protocol, so a name that is not cannot be listed either.
    test_a_link_in_place_of_an_object_is_never_followed = None
    test_a_link_in_place_of_a_folder_is_never_followed = None
    test_a_fifo_in_place_of_an_object_is_refused_without_blocking = None
    test_a_folder_in_place_of_an_object_is_refused = None
    test_a_file_in_place_of_a_folder_is_refused = None
    test_names_that_are_not_utf8_are_skipped_in_listings = None

    @pytest.fixture
    def arc(self, s3_env: S3Server, s3_bucket: str) -> Iterator[S3Archive]:
        with archive.get_interface(s3_env.location(s3_bucket, "store"), create=True) as arc:
            assert isinstance(arc, S3Archive)
            arc.test_server = s3_env
            yield arc

    def test_move_renames_and_keeps_mtime(self, arc: S3Archive) -> None:
        arc.write_key("blobs/sha256/ab/moved", [b"content"])
        set_mtime(arc.test_server, arc.bucket, arc, "blobs/sha256/ab/moved", 1_000_000_000.0)
        arc.move_key("blobs/sha256/ab/moved", "blobs/sha256/ab/moved.aside")
        assert not arc.has_key("blobs/sha256/ab/moved")
        assert arc.read_key("blobs/sha256/ab/moved.aside", 100) == b"content"
        assert arc.stat_key("blobs/sha256/ab/moved.aside") == KeyInfo(7, 1_000_000_000.0)

    def test_move_creates_target_folders(self, arc: S3Archive) -> None:
        arc.write_key("blobs/sha256/cd/x", [b"x"])
        arc.move_key("blobs/sha256/cd/x", "trash/deep/er/x")
        assert arc.read_key("trash/deep/er/x", 10) == b"x"
        assert arc.list_keys("trash/deep") == ["er"]

    def test_a_key_never_leads_outside_the_root(self, arc: S3Archive) -> None:
        from archive.errors import InvalidInputError

        for key in ("../outside", "releases/../../outside", "/etc/passwd", "releases//x", "./archive.json"):
            for action in (lambda: arc.stat_key(key), lambda: arc.read_key(key, 10),
                           lambda: arc.write_key(key, [b"x"]), lambda: arc.delete_key(key),
                           lambda: arc.move_key("archive.json", key), lambda: arc.list_keys(key)):
                with pytest.raises(InvalidInputError, match="is not a key inside the archive"):
                    action()
        objects = arc.test_server.client().list_objects_v2(Bucket=arc.bucket).get("Contents", [])
        assert all(o["Key"].startswith("store/") for o in objects), objects
