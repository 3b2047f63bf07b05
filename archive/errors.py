"""The one exception hierarchy of the archive.

Every error the library raises on purpose is an :class:`ArchiveError`. Backends translate
``OSError``, paramiko, HTTP and S3 errors into these at their boundary (``raise ... from exc``),
so callers and the CLI catch one root and get a one-line message that names the thing.
Details are kept in attributes too, for scripts that want more than the message.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Root of every error the archive raises on purpose."""


class InvalidInputError(ArchiveError, ValueError):
    """A name, version, range, path, folder or location given by the caller is not valid."""


class InvalidNameError(InvalidInputError):
    """A release name breaks the naming rules."""


class InvalidVersionError(InvalidInputError):
    """A version is not a strict SemVer 2.0 version."""


class InvalidRangeError(InvalidInputError):
    """A version range cannot be parsed."""


class InvalidPathError(InvalidInputError):
    """A file path in a release is absolute, escapes its folder, or is otherwise unsafe."""


class FolderProblemsError(InvalidPathError):
    """A folder cannot be published as it is; ``problems`` lists every reason found in one scan.

    The message names the count and the first few, on one line; ``problems`` has them all.
    """

    def __init__(self, message: str, folder: str, problems: list[str]) -> None:
        super().__init__(message)
        self.folder = folder
        self.problems = problems


class NotAnArchiveError(InvalidInputError):
    """A location exists but holds no archive (run ``archive init`` to create one)."""


class NotFoundError(ArchiveError, LookupError):
    """Something asked for is not in the archive."""


class FileNotInReleaseError(NotFoundError):
    """A release has no file at the path asked for (``open``, ``fetch``, ``cat``)."""


class KeyNotFoundError(NotFoundError):
    """A backend has no object under the requested key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no such object: {key}")
        self.key = key


class ReleaseNotFoundError(NotFoundError):
    """No release with this name (or name and version) exists."""


class NoMatchingVersionError(ReleaseNotFoundError):
    """Releases of the name exist but none matches the requested range."""


class BlobNotFoundError(NotFoundError):
    """A record references a blob the archive does not hold."""


class ReleaseExistsError(ArchiveError):
    """The release exists already with other content; releases are never overwritten."""


class KeyExistsError(ArchiveError):
    """A create-only write found its key taken (backend level; publish turns it into
    :class:`ReleaseExistsError` when the content differs)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object exists already: {key}")
        self.key = key


class DestinationError(ArchiveError):
    """Writing into the download destination failed (no space, no permission, ...)."""


class DestinationConflictError(DestinationError):
    """Files in the destination differ from the release and would be overwritten."""

    def __init__(self, message: str, paths: list[str]) -> None:
        super().__init__(message)
        self.paths = paths


class IntegrityError(ArchiveError):
    """Stored data does not match its content address, size or schema."""


class UnsafeObjectError(IntegrityError):
    """The storage holds a symbolic link, FIFO, device, socket or folder where an object (or a
    folder) of the archive should be: it is refused, never followed, opened or waited on."""

    def __init__(self, key: str, what: str, expected: str = "a file") -> None:
        if what == "a symbolic link":
            message = f"{key} is a symbolic link inside the archive; refusing to follow it"
        else:
            message = f"{key} is {what} inside the archive, not {expected}; refusing to use it"
        super().__init__(message)
        self.key, self.what = key, what


class ReadOnlyArchiveError(ArchiveError):
    """A write was attempted on an archive that can only be read."""


class TransferInterruptedError(ArchiveError):
    """A transfer job stopped because the operation was interrupted (Ctrl-C, SIGTERM); the
    interrupt itself reaches the caller as KeyboardInterrupt."""


class CredentialsError(ArchiveError):
    """Credentials are missing or cannot be obtained."""


class BackendError(ArchiveError):
    """The storage behind an archive failed."""


class AuthenticationError(BackendError):
    """The storage refused the credentials."""


class HostKeyError(AuthenticationError):
    """The server's host key is unknown or has changed; it is never accepted silently."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The storage cannot be reached (network, server down). Transfers retry these."""


class StorageFullError(BackendError):
    """The storage has no space left."""
