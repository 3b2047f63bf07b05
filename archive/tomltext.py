"""The little TOML this package reads and writes: lock files and the named-archives config.

Reading uses :mod:`tomllib` (``tomli`` before Python 3.11). Writing needs only strings and
integers in tables, so it is done by hand rather than with another dependency.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def loads(text: str) -> dict[str, Any]:
    """Parse TOML text; :class:`ValueError` (``TOMLDecodeError``) if it is not TOML."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 only
        import tomli as tomllib
    return tomllib.loads(text)


def string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, except DEL, which TOML wants escaped.

    >>> string('a "b" \\\\ c')
    '"a \\\\"b\\\\" \\\\\\\\ c"'
    """
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def key(text: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    bare = text and all(c.isascii() and (c.isalnum() or c in "-_") for c in text)
    return text if bare else string(text)
