"""The workloads, each run beside its anchor in the same process tree, alternating.

A repetition runs the anchor, then the archive, so that a slow minute of the machine (another
job, a writeback storm) hits both sides alike; the report takes medians. Before every timed
command the bench calls ``sync`` so that dirty pages left by the previous command (``cp``
writes a GiB into the page cache) are not written back on the next command's clock. Every
archive run gets a fresh user environment (``ARCHIVE_CACHE_DIR``, ``XDG_CACHE_HOME``,
``XDG_DATA_HOME``), so a "first push" or an "empty cache" really is one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import datasets
from .datasets import Sizes, describe_size
from .measure import Sample, drop_page_cache, prefault_memory, run_sequence, run_timed
from .report import Row, Target

logger = logging.getLogger(__name__)
NAME = "bench-data"


@dataclass
class Context:
    """What every workload needs: sizes, repetitions, where to work, and how to call the CLI."""

    scratch: Path
    sizes: Sizes
    reps: int
    startup_reps: int
    cold: bool
    cli: tuple[str, ...]
    python: str
    prefault_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    trash: list[Path] = field(default_factory=list)

    def path(self, label: str) -> Path:
        """A new, unused path in the scratch folder."""
        return self.scratch / f"{label}-{uuid.uuid4().hex[:8]}"

    def discard(self, *paths: Path) -> None:
        """Remove ``paths`` when the workload ends, not now: deleting a GiB or 10,000 files
        between two timed commands would put the filesystem's clean-up on the next one's clock."""
        self.trash.extend(paths)

    def empty_trash(self) -> None:
        remove(*self.trash)
        self.trash.clear()
        os.sync()

    def settle(self, moves_data: bool = True) -> None:
        """Prepare the machine for a timed command: flush dirty pages (with ``--cold`` drop the
        page cache), and before a command that writes data, prefault memory (see
        :func:`bench.measure.prefault_memory`)."""
        if self.cold and not drop_page_cache():
            raise RuntimeError("--cold needs root and a writable /proc/sys/vm/drop_caches")
        os.sync()
        if moves_data and self.prefault_bytes:
            prefault_memory(self.prefault_bytes)

    def timed(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, *,
              moves_data: bool = True) -> Sample:
        """Time one command; it runs in the scratch folder unless told otherwise, so that
        ``python -c "import archive"`` never picks up a source tree from the current folder."""
        self.settle(moves_data)
        return run_timed(argv, env=env, cwd=cwd or self.scratch)

    def timed_sequence(self, commands: list[list[str]], cwd: Path | None = None) -> Sample:
        self.settle()
        return run_sequence(commands, cwd=cwd)

    def archive(self, store: Path, *args: str) -> list[str]:
        """The argv of one real CLI call against the folder archive ``store``."""
        return [*self.cli, "--archive", str(store), "--no-progress", *args]

    def new_store(self, env: dict[str, str]) -> Path:
        """An empty folder archive, made by ``archive init`` (untimed)."""
        store = self.path("store")
        run_timed([*self.cli, "init", str(store)], env=env)
        return store


def find_cli(python: str) -> tuple[str, ...]:
    """The ``archive`` script installed beside ``python``, else ``python -m archive``.

    The script is looked up next to the interpreter rather than on PATH, because a version
    manager's shim on PATH (pyenv's is a shell script) would add its own start-up to every run.
    """
    script = Path(python).parent / "archive"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (python, "-m", "archive")


def base_env() -> dict[str, str]:
    """This process's environment as a user's shell would have it for the measured commands.

    ``PYTHONDONTWRITEBYTECODE`` is dropped (some sandboxes set it): without cached bytecode
    every start would compile the package anew, a cost no installed user pays.
    """
    return {k: v for k, v in os.environ.items() if k not in ("ARCHIVE_URL", "PYTHONDONTWRITEBYTECODE")}


def user_env(home: Path) -> dict[str, str]:
    """:func:`base_env` with the archive's user folders moved under ``home``."""
    env = base_env()
    env.update(ARCHIVE_CACHE_DIR=str(home / "cache" / "archive"), XDG_CACHE_HOME=str(home / "cache"),
               XDG_DATA_HOME=str(home / "data"))
    return env


def remove(*paths: Path) -> None:
    """Delete folders the archive made read-only (blobs are 0444 in 0755 folders)."""
    for path in paths:
        if path.exists():
            shutil.rmtree(path, onerror=_make_writable_and_retry)


def _make_writable_and_retry(function: Callable[[str], object], path: str, _exc: object) -> None:
    os.chmod(os.path.dirname(path), 0o755)
    function(path)


def relative_files(root: Path) -> list[str]:
    """Every file below ``root``, relative and sorted (the argv of ``openssl dgst``)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def tree_bytes(root: Path) -> int:
    """The total size of the files below ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def hash_then_copy(ctx: Context, src: Path, dst: Path) -> Sample:
    """The push anchor: ``openssl dgst -sha256`` of every file, then ``cp -r``."""
    return ctx.timed_sequence([["openssl", "dgst", "-sha256", *relative_files(src)],
                               ["cp", "-r", str(src), str(dst)]], cwd=src)


def hash_then_copy_durably(ctx: Context, src: Path, dst: Path) -> Sample:
    """The push anchor made durable, as a push is: hash, ``cp -r``, then ``sync`` (the archive
    fsyncs every blob before it names it; ``cp`` leaves its data in the page cache)."""
    return ctx.timed_sequence([["openssl", "dgst", "-sha256", *relative_files(src)],
                               ["cp", "-r", str(src), str(dst)], ["sync"]], cwd=src)


def copy_then_hash(ctx: Context, src: Path, dst: Path) -> Sample:
    """The cold-pull anchor: ``cp -r``, then ``openssl dgst -sha256`` of the copies."""
    files = [str(dst / rel) for rel in relative_files(src)]
    return ctx.timed_sequence([["cp", "-r", str(src), str(dst)], ["openssl", "dgst", "-sha256", *files]])


def check_same_tree(src: Path, dst: Path) -> None:
    """A pulled folder must hold the source's paths at the source's sizes (untimed); the
    marker a pull leaves (``.archive/``, see archive.placed) is not one of them."""
    want = {rel: (src / rel).stat().st_size for rel in relative_files(src)}
    got = {rel: (dst / rel).stat().st_size for rel in relative_files(dst) if not rel.startswith(".archive/")}
    if want != got:
        raise RuntimeError(f"{dst} does not hold the files of {src}")


def push_rows(ctx: Context, folder: Path, key: str, label: str, *, derived: bool,
              with_repeats: bool) -> list[Row]:
    """Push ``folder`` to a new archive against hash + copy; optionally push it twice more."""
    nbytes = tree_bytes(folder)
    samples: dict[str, list[Sample]] = {"anchor": [], "durable": [], "first": [], "same": [], "one": []}
    changed = 0
    for rep in range(ctx.reps):
        logger.info("push %s: repetition %d of %d", label, rep + 1, ctx.reps)
        copy = ctx.path("copy")
        samples["anchor"].append(hash_then_copy(ctx, folder, copy))
        ctx.discard(copy)
        copy = ctx.path("copy")
        samples["durable"].append(hash_then_copy_durably(ctx, folder, copy))
        ctx.discard(copy)
        home = ctx.path("home")
        env = user_env(home)
        store = ctx.new_store(env)
        samples["first"].append(ctx.timed(ctx.archive(store, "push", str(folder), NAME, "1.0.0"), env))
        if with_repeats:
            samples["same"].append(ctx.timed(ctx.archive(store, "push", str(folder), NAME, "1.0.1"), env))
            changed = datasets.rewrite_file(datasets.first_file(folder))
            samples["one"].append(ctx.timed(ctx.archive(store, "push", str(folder), NAME, "1.0.2"), env))
        ctx.discard(store, home)
    ctx.empty_trash()
    rows = [_row(f"push_{key}", f"push {label} to a folder archive", "openssl dgst -sha256 + cp -r",
                 samples["anchor"], samples["first"], (Target("ratio_max", 1.0, "<= 1.0x", derived),), nbytes),
            _row(f"push_{key}_durable", f"push {label} to a folder archive, against a durable copy",
                 "openssl dgst -sha256 + cp -r + sync", samples["durable"], samples["first"],
                 (Target("ratio_max", 1.0, "<= 1.0x", True),), nbytes)]
    if with_repeats:
        share = 0.05 + changed / nbytes
        rows += [
            _row("push_unchanged", "push it again, unchanged", "the first push", samples["first"],
                 samples["same"], (Target("ratio_max", 0.05, "<= 0.05x"),), nbytes),
            _row("push_one_changed", "push it again, 1 file changed", "the first push", samples["first"],
                 samples["one"], (Target("ratio_max", share, f"<= 0.05x + 1 file ({share:.3g}x)"),), nbytes),
        ]
    return rows


def _row(key: str, workload: str, anchor: str, anchor_samples: list[Sample], archive_samples: list[Sample],
         targets: tuple[Target, ...], nbytes: int = 0, notes: tuple[str, ...] = ()) -> Row:
    return Row(key, workload, anchor, tuple(s.seconds for s in anchor_samples),
               tuple(s.seconds for s in archive_samples), targets, nbytes,
               max((s.max_rss_kib for s in archive_samples), default=0), notes=notes)


def publish_once(ctx: Context, folder: Path, env: dict[str, str]) -> Path:
    """A folder archive holding ``folder`` as ``NAME 1.0.0`` (untimed set-up for pulls)."""
    store = ctx.new_store(env)
    run_timed(ctx.archive(store, "push", str(folder), NAME, "1.0.0"), env=env)
    return store


def pull_cold_row(ctx: Context, folder: Path, key: str, label: str, *, derived: bool) -> Row:
    """Pull into a new folder with an empty cache, against ``cp -r`` + ``openssl dgst``."""
    store = publish_once(ctx, folder, user_env(ctx.path("home")))
    anchor, measured = [], []
    for rep in range(ctx.reps):
        logger.info("pull %s, empty cache: repetition %d of %d", label, rep + 1, ctx.reps)
        copy, dest, home = ctx.path("copy"), ctx.path("pulled"), ctx.path("home")
        anchor.append(copy_then_hash(ctx, folder, copy))
        measured.append(ctx.timed(ctx.archive(store, "pull", NAME, "1.0.0", "--to", str(dest)), user_env(home)))
        check_same_tree(folder, dest)
        ctx.discard(copy, dest, home)
    ctx.discard(store)
    ctx.empty_trash()
    nbytes = tree_bytes(folder)
    return _row(f"pull_cold_{key}", f"pull {label}, empty cache", "cp -r + openssl dgst -sha256", anchor,
                measured, (Target("ratio_max", 1.0, "<= 1.0x", derived),), nbytes)


def pull_new_folder_row(ctx: Context, folder: Path, key: str, label: str, targets: tuple[Target, ...]) -> Row:
    """Pull into a new folder with a new user environment (nothing cached, nothing known
    verified), against ``cp -r``: what a first pull of many small files costs per file."""
    store = publish_once(ctx, folder, user_env(ctx.path("home")))
    anchor, measured = [], []
    for rep in range(ctx.reps):
        logger.info("pull %s into a new folder: repetition %d of %d", label, rep + 1, ctx.reps)
        copy, dest, home = ctx.path("copy"), ctx.path("pulled"), ctx.path("home")
        anchor.append(ctx.timed(["cp", "-r", str(folder), str(copy)]))
        measured.append(ctx.timed(ctx.archive(store, "pull", NAME, "1.0.0", "--to", str(dest)), user_env(home)))
        check_same_tree(folder, dest)
        ctx.discard(copy, dest, home)
    ctx.discard(store)
    ctx.empty_trash()
    return _row(f"pull_new_{key}", f"pull {label} into a new folder, empty user cache", "cp -r", anchor,
                measured, targets, tree_bytes(folder))


def pull_cached_row(ctx: Context, folder: Path, key: str, label: str, *, derived: bool,
                    link: str | None = None) -> Row:
    """Pull a release pulled once before into a new folder, against ``cp -r``: its blobs are
    in the cache, or (from an archive on a local disk, which is not cached) verified already.

    ``link`` passes ``--link MODE`` (the default mode otherwise), to show what a mode costs.
    """
    options = ["--link", link] if link else []
    home = ctx.path("home")
    env = user_env(home)
    store = publish_once(ctx, folder, env)
    warm = ctx.path("warm-up")
    run_timed(ctx.archive(store, "pull", NAME, "1.0.0", "--to", str(warm), *options), env=env)
    anchor, measured = [], []
    for rep in range(ctx.reps):
        logger.info("pull %s from the cache: repetition %d of %d", label, rep + 1, ctx.reps)
        copy, dest = ctx.path("copy"), ctx.path("pulled")
        anchor.append(ctx.timed(["cp", "-r", str(folder), str(copy)]))
        measured.append(ctx.timed(ctx.archive(store, "pull", NAME, "1.0.0", "--to", str(dest), *options), env))
        check_same_tree(folder, dest)
        ctx.discard(copy, dest)
    ctx.discard(store, home, warm)
    ctx.empty_trash()
    nbytes = tree_bytes(folder)
    mode = f", --link {link}" if link else ""
    return _row(f"pull_cached_{key}" + (f"_{link}" if link else ""),
                f"pull {label} again (already local, verified) into a new folder{mode}", "cp -r", anchor, measured,
                (Target("ratio_max", 0.05, ">= 20x faster (<= 0.05x)", derived or bool(link)),), nbytes)


def resolve_rows(ctx: Context) -> list[Row]:
    """Resolve ``^1`` among many versions: through ``archive show`` and in-process."""
    count = ctx.sizes.versions
    store = ctx.new_store(user_env(ctx.path("home")))
    started = time.perf_counter()
    datasets.make_versions(store, NAME, count)
    logger.info("wrote %d versions in %.1f s", count, time.perf_counter() - started)
    expected = datasets.highest_match_of_caret_one(count)
    env = user_env(ctx.path("home"))
    cli = [ctx.timed(ctx.archive(store, "show", NAME, "^1"), env, moves_data=False)
           for _ in range(ctx.startup_reps)]
    seconds, reads = resolve_in_process(ctx, store, expected)
    remove(store)
    label = f"resolve ^1 among {count:,} versions"
    return [
        _row("resolve_cli", f"{label} (archive show)", "-", [], cli, (Target("seconds_max", 0.5, "< 0.5 s"),)),
        Row("resolve_library", f"{label} (library, in-process)", "-", (), tuple(seconds),
            (Target("seconds_max", 0.5, "< 0.5 s"), Target("reads_max", 5, "<= 5 files read")),
            file_reads=reads),
    ]


RESOLVE_SCRIPT = """
import json, sys, time
import archive
store, name, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = []
for _ in range(reps):
    with archive.get_interface(store) as arc:
        opened = []
        original = arc.open_key
        arc.open_key = lambda key: opened.append(key) or original(key)
        start = time.perf_counter()
        release = arc.resolve(name, "^1")
        runs.append((time.perf_counter() - start, len(opened), release.version))
print(json.dumps(runs))
"""


def resolve_in_process(ctx: Context, store: Path, expected: str) -> tuple[list[float], int]:
    """Time ``ArchiveInterface.resolve`` in the measured Python; count the files it opens.

    The count wraps the instance's ``open_key``, the one primitive every read goes through, so
    reading each version's pointer or record would show up as thousands of opens. It runs in a
    child of the measured interpreter, not in the bench, so it times the same installation as
    the CLI rows. Returns the seconds of each call and the most files one call opened.
    """
    done = subprocess.run([ctx.python, "-c", RESOLVE_SCRIPT, str(store), NAME, str(ctx.startup_reps)],
                          capture_output=True, text=True, check=True, env=base_env(), cwd=ctx.scratch)
    runs = json.loads(done.stdout)
    wrong = {version for _, _, version in runs if version != expected}
    if wrong:
        raise RuntimeError(f"^1 resolved to {wrong}, expected {expected}")
    return [seconds for seconds, _, _ in runs], max(opened for _, opened, _ in runs)


def startup_rows(ctx: Context) -> list[Row]:
    """``archive --help`` and ``import archive``, each against a bare ``python -c pass``."""
    bare, env = [ctx.python, "-c", "pass"], base_env()
    rows = []
    for key, label, argv in (("help", "archive --help", [*ctx.cli, "--help"]),
                             ("import", 'python -c "import archive"', [ctx.python, "-c", "import archive"])):
        run_timed(argv, env=env)  # warm-up: bytecode written, files in the page cache
        anchor, measured = [], []
        for _ in range(ctx.startup_reps):
            anchor.append(ctx.timed(bare, env, moves_data=False))
            measured.append(ctx.timed(argv, env, moves_data=False))
        rows.append(_row(f"startup_{key}", label, "python -c pass", anchor, measured,
                         (Target("overhead_max", 0.150, "< 150 ms over it"),)))
    return rows


def memory_rows(ctx: Context, big_folder: Path) -> list[Row]:
    """Peak RSS of one push and one empty-cache pull of a single big file (one run each)."""
    size = ctx.sizes.big_file_size
    home = ctx.path("home")
    env = user_env(home)
    store = ctx.new_store(env)
    logger.info("push and pull one %s file", describe_size(size))
    push = ctx.timed(ctx.archive(store, "push", str(big_folder), NAME, "1.0.0"), env)
    dest, empty_home = ctx.path("pulled"), ctx.path("home")
    pull = ctx.timed(ctx.archive(store, "pull", NAME, "1.0.0", "--to", str(dest)), user_env(empty_home))
    check_same_tree(big_folder, dest)
    remove(store, home, empty_home, dest)
    target = (Target("rss_max_mib", 100, "< 100 MiB"),)
    label = f"one {describe_size(size)} file"
    return [_row("rss_push", f"peak RSS: push {label}", "-", [], [push], target, size),
            _row("rss_pull", f"peak RSS: pull {label}, empty cache", "-", [], [pull], target, size)]
