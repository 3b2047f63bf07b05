"""Releases of many entries (issue 14): the fast paths give exactly what the plain ones give.

The record codec, the whole-list path check, the batched stat-cache lookup and the streamed
``show --json`` each replace per-entry Python work; every test here compares one of them with
the plain form it stands for, on cases chosen to hit their fall-backs, and a release of
3,000 files (100,000 in the slow suite) goes through the real CLI (push, show --json, pull) end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archive import jsonout
from archive.errors import IntegrityError
from archive.hashing import BlobId
from archive.record_codec import encode_files, load_canonical, paths_are_fine
from archive.records import FileEntry, Release, canonical_json, check_paths, parse_record, path_problems
from archive.statcache import StatCache

BLOB = BlobId.of_bytes(b"x")


def run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def entries_of_every_shape(count: int = 40) -> dict[str, FileEntry]:
    """Entries with and without the optional fields, fields of a newer version, odd paths."""
    files = {}
    for i in range(count):
        extra = {"zz_new": {"k": [i]}, "a_new": None} if i % 7 == 0 else {}
        media_type = (None, "text/plain", 'odd/"type\u00e9')[i % 3]
        files[f"d{i % 4}/\u00e9 f\"{i}\\x"[:-2] + f"{i}.txt"] = FileEntry(BLOB, i * 3, extra, i % 5 == 0, media_type)
    return files


def test_record_bytes_are_the_canonical_json_of_the_record() -> None:
    files = entries_of_every_shape()
    release = Release("n", "1.0.0", "2020-01-01T00:00:00Z", {"message": "h\u00e9", "x": [1.5, {"b": 1}]},
                      files, {"aa_extra": 1, "zz_extra": {"q": True}})
    assert release.to_bytes() == canonical_json(release.to_json())
    assert encode_files({}) == "{}"
    parsed = parse_record(release.to_bytes())
    assert parsed.files == files and parsed.extra == release.extra and parsed.to_bytes() == release.to_bytes()
    assert {p: e.media_type for p, e in parsed.files.items()} == {p: e.media_type for p, e in files.items()}


def test_a_created_record_knows_its_id_without_serializing_again() -> None:
    files = entries_of_every_shape()
    release = Release.create("n", "1.0.0", files, {"message": "m", "t": (1, 2.5, None)})
    data = release.to_bytes()
    assert release.record_id == BlobId.of_bytes(data) == parse_record(data).record_id
    assert release.metadata["t"] == [1, 2.5, None] and release.files == dict(sorted(files.items()))


@pytest.mark.parametrize("files, problem", [
    ({"a": FileEntry(BLOB, -1)}, "size is a count of bytes"),
    ({"a": FileEntry(BLOB, True)}, "size is a count of bytes"),
    ({"a": FileEntry(BLOB, 1, media_type="x" * 300)}, "media_type is a short string"),
    ({"a/../b": FileEntry(BLOB, 1)}, "unsafe path"),
    ({"a": FileEntry(BLOB, 1), "A": FileEntry(BLOB, 1)}, "case-insensitive"),
])
def test_create_refuses_what_a_reader_would(files: dict, problem: str) -> None:
    with pytest.raises(IntegrityError, match=problem):
        Release.create("n", "1.0.0", files)


def test_a_record_that_is_not_canonical_still_gets_the_strict_parse() -> None:
    release = Release.create("n", "1.0.0", {"a": FileEntry(BLOB, 1)})
    canonical = release.to_bytes()
    assert load_canonical(canonical) is not None
    spaced = json.dumps(json.loads(canonical), indent=1).encode()
    assert load_canonical(spaced) is None and parse_record(spaced).files == release.files
    twice = canonical.replace(b'"size":1}', b'"size":1,"size":1}')
    assert load_canonical(twice) is None
    with pytest.raises(IntegrityError, match="duplicate JSON key 'size'"):
        parse_record(twice)
    for bad in (b'{"size":-1,"blob":"%s"}', b'{"blob":"%s","size":true}', b'{"blob":"%s","size":1,"executable":1}',
                b'{"blob":"%s","size":1,"media_type":7}'):
        text = canonical.replace(b'{"blob":"%s","size":1}' % str(BLOB).encode(), bad % str(BLOB).encode())
        with pytest.raises(IntegrityError):
            parse_record(text)


@pytest.mark.parametrize("paths", [
    ["a", "b/c", "b/d"], ["A/x", "a/y"], ["a", "A"], ["a", "a/b"], ["a", "a-b", "a/b"], ["a/b", "a"],
    ["a//b"], ["/a"], ["a/"], [""], ["a/./b"], ["a/../b"], [".."], ["."], ["C:x"], ["a/C:x"], ["a\\b"],
    ["a\x00b"], ["a\x7f"], ["e\u0301"], ["\u00e9", "e\u0301"], ["a/\u0301b"], ["\ud800"], ["x", "y/z", "x/q"],
    ["stra\u00dfe", "STRASSE"], ["d/e", "D/E/f"], ["..."], ["a..b"], ["a:b"],
])
def test_the_whole_list_check_never_passes_what_the_exact_check_refuses(paths: list[str]) -> None:
    problems = path_problems(paths)
    if paths_are_fine(paths):
        assert problems == []
    elif not problems:  # a false alarm only sends the list to the exact check, which passes it
        check_paths(paths)
    assert paths_are_fine(["a", "b/c", "b/d", "a-b/c", "a.b"])


def test_batched_stat_cache_lookups_answer_as_single_ones(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.db")
    files = []
    for i in range(520):  # more than one batch of the former per-query lookups
        path = tmp_path / f"f{i}"
        path.write_bytes(b"%d" % i)
        files.append((path, os.stat(path)))
    known = files[::3]
    cache.remember([(p, info, BlobId.of_bytes(p.read_bytes())) for p, info in known], None)
    (tmp_path / "f3").write_bytes(b"changed")  # the identity it was remembered with no longer holds
    files[3] = (files[3][0], os.stat(files[3][0]))
    asked = files + files[:2]  # a path asked twice gets two answers
    assert cache.lookup_many(asked) == [cache.lookup(p, info) for p, info in asked]
    assert sum(blob is not None for blob in cache.lookup_many(asked)) == len(known) - 1 + 1
    broken = tmp_path / "broken"
    broken.mkdir()
    assert StatCache(broken).lookup_many(files[:3]) == [None] * 3  # unusable: acts empty


@pytest.mark.parametrize("ascii_only", [True, False])
def test_streamed_show_json_is_the_indented_json_of_the_record(ascii_only: bool, monkeypatch) -> None:
    monkeypatch.setattr(jsonout, "CHUNK_ENTRIES", 7)
    for files, metadata in (({}, {}), (entries_of_every_shape(), {"m": [1, {"z": "\u00e9\u202e"}], "e": {}})):
        release = Release("n", "1.0.0", "2020-01-01T00:00:00Z", metadata, files, {"later": [1, 2]})
        want = json.dumps(release.to_json(), indent=2, sort_keys=True, ensure_ascii=ascii_only)
        assert "".join(jsonout.record_json_chunks(release, ascii_only)) == want


def make_entries(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"d{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"e{i:06d}").write_bytes(b"" if i % 2 == 0 else b"%d\n" % (i % 97))


def round_trip(tmp_path: Path, count: int, timeout: float = 600) -> None:
    """Push ``count`` generated files, read them back with show --json and pull: all there."""
    src, store, out = tmp_path / "src", str(tmp_path / "store"), tmp_path / "out"
    make_entries(src, count)
    env = {"ARCHIVE_CACHE_DIR": str(tmp_path / "cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert run("init", store).returncode == 0
    push = run("-a", store, "--no-progress", "push", str(src), "big", "1.0.0", env=env, timeout=timeout)
    assert push.returncode == 0, push.stderr
    show = run("-a", store, "show", "big", "--json", env=env, timeout=timeout)
    assert show.returncode == 0, show.stderr
    files = json.loads(show.stdout)["files"]
    assert len(files) == count and files["d000/e000001"]["size"] == 2 and files["d000/e000000"]["size"] == 0
    pull = run("-a", store, "--no-progress", "pull", "big", "1.0.0", "--to", str(out), env=env, timeout=timeout)
    assert pull.returncode == 0, pull.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("d*/*")) == sorted(files)
    again = run("-a", store, "--no-progress", "push", str(src), "big", "1.0.1", env=env, timeout=timeout)
    assert again.returncode == 0 and "new: 0 files" in again.stdout, again.stdout


def test_a_release_of_3000_files_round_trips_through_the_cli(tmp_path: Path) -> None:
    round_trip(tmp_path, 3_000)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_a_release_of_100000_files_round_trips_through_the_cli(tmp_path: Path) -> None:
    round_trip(tmp_path, 100_000, timeout=3600)


def test_the_scale_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """``python -m bench.scale`` at a tiny size (its --quick sizes take a minute on a busy machine):
    every command of the entries part runs, and the table has a line per command."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "bench.scale", "--only", "entries", "--entries", "300",
                           "--prefault", "0", "--scratch", str(tmp_path)], capture_output=True, text=True, cwd=repo, timeout=600)
    assert done.returncode == 0, done.stderr
    for command in ("push", "show --json", "resolve", "pull"):
        assert f"300 entries: {command} " in done.stdout
    assert list(tmp_path.iterdir()) == []  # it removed what it made


def test_the_canonical_check_compares_a_large_record_piece_by_piece(monkeypatch) -> None:
    """A record is canonical only if every piece matches: a duplicate key, a space or a
    reordered member anywhere among many entries sends it to the strict parser."""
    from archive import record_codec

    monkeypatch.setattr(record_codec, "ENCODED_AT_ONCE", 3)
    files = {f"f{i:02d}": FileEntry(BlobId.of_bytes(b"%d" % i), 100_000, media_type="text/csv") for i in range(10)}
    release = Release("n", "1.0.0", "2020-01-01T00:00:00Z", {"m": {"k": [1]}}, files)
    data = release.to_bytes()
    assert load_canonical(data) == json.loads(data)
    entry = data[data.index(b'"f04"'):data.index(b',"f05"')]
    for bad in (data.replace(b',"f05"', b', "f05"'), data.replace(b',"f05"', b"," + entry + b',"f05"'),
                data.replace(b'"f08"', b'"f09"', 1), data[:-1] + b" }", data + b"\n"):
        assert load_canonical(bad) is None
    with pytest.raises(IntegrityError, match="duplicate JSON key"):
        parse_record(data.replace(b',"f05"', b"," + entry + b',"f05"'))
    parsed = parse_record(data)
    assert parsed.files == files and parsed.record_id == release.record_id
    sizes = {id(entry.size) for entry in parsed.files.values()}
    media_types = {id(entry.media_type) for entry in parsed.files.values()}
    assert (len(sizes), len(media_types)) == (1, 1)  # one object each, not one per entry
