"""A pull into a new folder builds it aside and gives it its name whole (archive.staging)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from archive.placing import LARGE_BLOB
from archive.staging import reveal_folder
from tests.conftest import make_tree
from tests.test_download import FILES, published, published_via_cache  # noqa: F401 (fixtures)
from tests.test_publish import snapshot


def hidden_beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture
def roots(monkeypatch) -> list[tuple[Path, list[str]]]:
    """Each folder a pull writes its files in, with what its parent held then."""
    import archive.download as download

    seen: list[tuple[Path, list[str]]] = []
    place_all = download._place_all

    def watching(arc, cache, root, *args, **kwargs):
        seen.append((root, sorted(os.listdir(root.parent))))
        return place_all(arc, cache, root, *args, **kwargs)

    monkeypatch.setattr(download, "_place_all", watching)
    return seen


def test_a_new_folder_is_built_aside_and_named_whole(published, tmp_path: Path, roots) -> None:
    """While the files are written, nothing is at the destination's name; afterwards only the
    folder is, with the pull's marker, and parents that did not exist were made."""
    out = tmp_path / "new" / "parents" / "out"
    assert snapshot(published.download("calib", "^1", out, progress=False)) == FILES
    [(root, beside)] = roots
    assert root.parent == out.parent and root.name.startswith(".out.") and beside == [root.name]
    assert (out / ".archive" / "pulled.json").is_file() and hidden_beside(out) == []


def test_an_existing_folder_is_filled_where_it_is(published, tmp_path: Path, roots) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert snapshot(published.download("calib", "^1", out, progress=False)) == FILES
    assert [root for root, _ in roots] == [out]


def test_a_pull_without_the_cache_places_each_file_where_it_goes(published_via_cache, tmp_path: Path, roots) -> None:
    """--no-cache streams every byte from the archive: an interrupted pull keeps each file it
    placed whole, for the next pull to keep, so it is not built aside."""
    out = tmp_path / "out"
    assert snapshot(published_via_cache.download("calib", "^1", out, use_cache=False, progress=False)) == FILES
    assert [root for root, _ in roots] == [out]


def test_a_pull_that_streams_large_files_is_not_built_aside(published_via_cache, tmp_path: Path, roots) -> None:
    """A large file the cache does not hold streams straight into the destination: such a pull
    is not built aside either (an interrupted one keeps each large file it placed); once the
    cache holds it (cache_large), the pull is built aside again."""
    files = {"big.bin": os.urandom(LARGE_BLOB)}
    published_via_cache.publish(make_tree(tmp_path / "big", files), "big", "1.0.0", progress=False)
    out, staged = tmp_path / "out", tmp_path / "staged"
    assert snapshot(published_via_cache.download("big", "*", out, progress=False)) == files
    assert [root for root, _ in roots] == [out]
    published_via_cache.download("big", "*", tmp_path / "kept", cache_large=True, progress=False)
    roots.clear()
    assert snapshot(published_via_cache.download("big", "*", staged, progress=False)) == files
    [(root, _)] = roots
    assert root.parent == staged.parent and root.name.startswith(".staged.") and hidden_beside(staged) == []


def test_folders_killed_pulls_left_are_removed_and_live_ones_kept(published, tmp_path: Path) -> None:
    """A hidden folder beside the destination whose builder is gone (no lock) is removed by the
    next pull there; one whose builder is alive (it holds its lock) is left alone."""
    out = tmp_path / "out"
    stale = make_tree(tmp_path / ".out.0123456789ab.archive-part", {"sub/half.bin": b"half"})
    live = make_tree(tmp_path / ".out.ba9876543210.archive-part", {"sub/half.bin": b"being written"})
    other = make_tree(tmp_path / ".outer.0123456789ab.archive-part", {"x": b"another folder's"})
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert snapshot(published.download("calib", "^1", out, progress=False)) == FILES
        assert not stale.exists() and snapshot(live) == {"sub/half.bin": b"being written"}
        assert snapshot(other) == {"x": b"another folder's"}
    finally:
        os.close(fd)


def test_a_name_taken_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    staged = make_tree(tmp_path / ".out.0123456789ab.archive-part", {"a.txt": b"ours"})
    taken = make_tree(tmp_path / "out", {"b.txt": b"theirs"})
    assert reveal_folder(staged, taken) is False
    assert snapshot(taken) == {"b.txt": b"theirs"} and snapshot(staged) == {"a.txt": b"ours"}
    taken_empty = tmp_path / "empty"
    taken_empty.mkdir()
    assert reveal_folder(staged, taken_empty) is False
    assert list(taken_empty.iterdir()) == [] and snapshot(staged) == {"a.txt": b"ours"}
    assert reveal_folder(staged, tmp_path / "free") is True
    assert snapshot(tmp_path / "free") == {"a.txt": b"ours"} and not staged.exists()


@pytest.mark.parametrize("link", ["hard", "symlink"])
def test_links_into_the_cache_are_placed_where_they_go(published, tmp_path: Path, link: str, roots) -> None:
    """Links are placed one by one, each atomically, and remembered by their paths: not built aside."""
    out = tmp_path / "out"
    assert snapshot(published.download("calib", "^1", out, link=link, progress=False)) == FILES
    assert [root for root, _ in roots] == [out]
