"""Namespaces: ``NAMESPACE/NAME`` release names, and the format they need.

A namespaced release is stored under ``releases/@NAMESPACE/NAME/`` (see :mod:`archive.layout`).
A reader of format 1 skips that folder (``@NAMESPACE`` is not a name), so it would not see
those releases, and its gc would take their blobs for garbage. So the archive's marker says
format 2 from just before the first namespaced pointer is written: such a reader then refuses
the whole archive in one line instead. Archives without namespaces stay format 1, untouched,
readable by every version of this tool.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import layout
from .errors import NotAnArchiveError, ReleaseNotFoundError
from .records import canonical_json, load_json

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
MAX_MARKER_BYTES = 4096


def prepare_for_name(arc: "ArchiveInterface", name: str) -> None:
    """Make ``arc`` able to hold a release of ``name`` before its pointer is written.

    A plain name needs nothing. A namespaced one needs format 2: the marker is rewritten once
    (atomically, keeping every other field), so a concurrent first publish writes the same.
    """
    if "/" not in name:
        return
    marker = load_json(arc.read_key(layout.MARKER_KEY, MAX_MARKER_BYTES), f"{arc.location}/{layout.MARKER_KEY}")
    if not isinstance(marker, dict) or marker.get("version") not in layout.READABLE_FORMAT_VERSIONS:
        raise NotAnArchiveError(f"{arc.location}: {layout.MARKER_KEY} does not describe an archive")
    if marker["version"] >= layout.NAMESPACES_FORMAT_VERSION:
        return
    marker["version"] = layout.NAMESPACES_FORMAT_VERSION
    arc.write_key(layout.MARKER_KEY, [canonical_json(marker) + b"\n"])
    logger.info("%s is now format %d: it holds namespaced names", arc.location, layout.NAMESPACES_FORMAT_VERSION)


def no_release_named(arc: "ArchiveInterface", name: str) -> ReleaseNotFoundError:
    """The error for a name with no release; when ``name`` is a namespace, it says so and names
    a few of its names (``team`` for ``team/calib``): the likely mistake. One more listing, on
    this error path only."""
    message = f"no release named {name!r} in {arc.location}"
    if "/" not in name:
        inside = arc.names(name)
        if inside:
            shown = ", ".join(inside[:3]) + (", ..." if len(inside) > 3 else "")
            message += f"; {name!r} is a namespace holding {shown}"
    return ReleaseNotFoundError(message)
