"""What the code under test asks of the OS, seen through Python's audit hooks (PEP 578).

An audit hook sees every ``open``, ``os.chmod`` and the like, whoever makes the call (the
archive's own code, a library, a worker thread), without replacing any function. A hook cannot
be removed once added, so one is added on first use and records only inside an
:func:`audit_events` block.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

_RECORDING: dict[str, list[tuple]] = {}  # event name -> the arguments of each such event while recorded
_hooked = False


def _record(event: str, args: tuple) -> None:
    seen = _RECORDING.get(event)
    if seen is not None:
        seen.append(args)


@contextmanager
def audit_events(event: str) -> Iterator[list[tuple]]:
    """The arguments of every ``event`` audit event raised inside the block, in order."""
    global _hooked
    if not _hooked:
        sys.addaudithook(_record)
        _hooked = True
    seen = _RECORDING[event] = []
    try:
        yield seen
    finally:
        del _RECORDING[event]


def opens_below(root: "str | os.PathLike[str]", events: list[tuple]) -> Counter[str]:
    """How often each path below ``root`` was opened by name (relative to ``root``), from the
    ``open`` events of :func:`audit_events`."""
    root = str(root)
    return Counter(os.path.relpath(args[0], root) for args in events
                   if isinstance(args[0], str) and args[0].startswith(root))


def opens_by_name(events: list[tuple]) -> Counter[str]:
    """How often each last part of a name was opened (the archive opens blobs by name within
    their folder, ``dir_fd``), from the ``open`` events of :func:`audit_events`."""
    return Counter(os.path.basename(args[0]) for args in events if isinstance(args[0], str))
