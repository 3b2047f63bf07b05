"""A folder archive's listing skips hidden names and names that are not UTF-8, whether it
takes its fast path (every name plain ASCII) or not."""

from __future__ import annotations

import os
from pathlib import Path

from archive.keys import usable_names


def test_plain_names_are_kept_at_once_and_hidden_or_undecodable_ones_skipped(folder_archive) -> None:
    folder = Path(folder_archive.location) / "tmp"
    for name in ("a", "b.c", "é", ".hidden", "x.y"):
        (folder / name).write_bytes(b"")
    os.close(os.open(os.fsencode(folder) + b"/bad\xff", os.O_CREAT | os.O_WRONLY, 0o644))
    assert sorted(folder_archive.list_keys("tmp")) == ["a", "b.c", "x.y", "é"]
    assert usable_names(["a", "b.c", "x.y"], "tmp") == ["a", "b.c", "x.y"]
    assert usable_names([".a", "b"], "tmp") == ["b"] and usable_names(["a", ".b"], "tmp") == ["a"]
    assert usable_names([], "tmp") == []
