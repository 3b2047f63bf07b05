"""Building a release from files scattered over a disk, published all or nothing.

::

    with arc.new_release("calib", "1.3.0", metadata={"message": "May run"}) as rel:
        rel.add("/data/run7/gains.csv", as_="gains.csv")
        rel.add_dir("/data/run7/raw", prefix="raw")
        rel.add_bytes(b'{"run": 7}', as_="run.json")

Nothing reaches the archive while the block runs: the builder only notes what goes where
(and keeps ``add_bytes`` data in a private staging folder). Leaving the block normally
publishes everything through the same code as a folder publish
(:func:`archive.publish.publish_sources`: blobs first, record, pointer last). Leaving it by an
exception publishes nothing and writes nothing to the archive, so there is nothing for
``verify`` or ``gc`` to find. Paths are checked as they are added (a clash is refused at the
``add`` that causes it), and again as a whole before publishing.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Mapping

from .errors import InvalidInputError, InvalidPathError
from .placed import is_reserved
from .records import Release, check_metadata, check_name, check_path, check_paths
from .scan import SourceFile, scan_folder
from .versions import check_release_version

if TYPE_CHECKING:
    from .interface import ArchiveInterface
    from .publish import PublishStats

logger = logging.getLogger(__name__)


class ReleaseBuilder:
    """Files gathered for one release; published when the ``with`` block ends without error.

    Made by :meth:`ArchiveInterface.new_release`. After the block, :attr:`release` is the
    stored record.
    """

    def __init__(self, arc: "ArchiveInterface", name: str, version: str,
                 metadata: Mapping[str, Any] | None = None, *, jobs: int | None = None,
                 progress: bool | None = None, stats: "PublishStats | None" = None) -> None:
        arc.check_writable()
        self.arc = arc
        self.name = check_name(name)
        self.version = check_release_version(version)
        self.metadata = check_metadata(metadata)
        self.release: Release | None = None
        self._options = {"jobs": jobs, "progress": progress, "stats": stats}
        self._sources: dict[str, SourceFile] = {}
        self._staging: tempfile.TemporaryDirectory | None = None
        self._closed = False

    def add(self, path: str | Path, as_: str | None = None) -> None:
        """Add the file at ``path`` as release path ``as_`` (default: its file name).

        A symbolic link is followed (as a folder publish follows one); anything but a regular
        file is refused.
        """
        location = Path(path)
        try:
            info = os.stat(location)
        except OSError as exc:
            raise InvalidInputError(f"cannot add {str(location)!r}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInputError(f"cannot add {str(location)!r}: not a regular file")
        self._put(SourceFile(as_ if as_ is not None else location.name, location, info))

    def add_dir(self, folder: str | Path, prefix: str = "") -> None:
        """Add every file below ``folder`` (scanned as ``archive push`` scans one, honouring its
        ``.archiveignore``), under ``prefix/`` if given."""
        head = prefix.strip("/")
        for source in scan_folder(Path(folder)):
            self._put(SourceFile(f"{head}/{source.path}" if head else source.path, source.location, source.info))

    def add_bytes(self, data: bytes, as_: str) -> None:
        """Add ``data`` as the file ``as_`` (kept in a private staging folder until published)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInputError(f"add_bytes takes bytes, not {type(data).__name__}")
        self._check_open()
        check_path(as_)
        if self._staging is None:
            self._staging = tempfile.TemporaryDirectory(prefix="archive-release-")
        location = Path(self._staging.name) / f"{len(os.listdir(self._staging.name))}.bin"
        location.write_bytes(data)
        self._put(SourceFile(as_, location, os.stat(location)))

    def _put(self, source: SourceFile) -> None:
        """Note one file, refusing a path that is unsafe or clashes with one added before."""
        self._check_open()
        check_path(source.path)
        if is_reserved(source.path):  # as push leaves a top-level .archive/ out: no pull could place it
            raise InvalidPathError(f"{source.path!r}: '.archive' at the top of a release is reserved for the record"
                                   " of what a pull placed")
        if source.path in self._sources:
            raise InvalidPathError(f"{source.path!r} is added twice to {self.name} {self.version}")
        check_paths([*self._sources, source.path])
        self._sources[source.path] = source

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidInputError(f"the release {self.name} {self.version} is closed: add files inside the block")

    def publish(self) -> Release:
        """Publish what was added (the end of the block does it); return the stored record."""
        from .cache import default_cache
        from .publish import publish_sources

        self._check_open()
        self._closed = True
        try:
            if not self._sources:  # as a push of an empty folder is refused
                raise InvalidInputError(f"nothing was added to {self.name} {self.version}: a release has files")
            self.release = publish_sources(self.arc, list(self._sources.values()), self.name, self.version,
                                           self.metadata, stat_cache=default_cache().stat_cache, **self._options)
        finally:
            self._discard()
        return self.release

    def _discard(self) -> None:
        self._closed = True
        if self._staging is not None:
            self._staging.cleanup()
            self._staging = None

    def __enter__(self) -> "ReleaseBuilder":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            logger.info("nothing published for %s %s: the block raised %s", self.name, self.version, kind.__name__)
            self._discard()
            return
        self.publish()
