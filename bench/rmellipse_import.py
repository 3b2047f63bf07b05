"""Importing a real-sized rmellipse archive: ``python -m bench.rmellipse_import [--quick]``.

Builds an rmellipse 0.4.5 ``FileSystemArchive`` with rmellipse's own code (its venv, as the
tests make it: ``.venv-rmellipse/`` or ``$RMELLIPSE_PYTHON``; see tests/rmellipse_helper.py):
one title released in ``--versions`` versions (5) of ``--files`` files (1,000) totalling
``--gib`` GiB (1.1), each version rewriting a tenth of the files, the last one also released
to a second workspace (as a team shares a release; rmellipse then stores its files again,
``--no-second-workspace`` leaves that out). Then times ``archive import``
(the real command, into an empty archive), a rerun (nothing new), and ``cp -r`` of the same
archive as the anchor (what only copying the bytes costs on this disk), and prints the stored
size before (rmellipse) and after (ours). Numbers vary by machine: they belong in a report,
never in test asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import run_timed

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "rmellipse_helper.py"


def rmellipse_python() -> Path:
    python = Path(os.environ.get("RMELLIPSE_PYTHON") or REPO / ".venv-rmellipse" / "bin" / "python")
    if not python.exists():
        sys.exit(f"no rmellipse venv at {python}: run scripts/install-test-deps.sh")
    return python


def file_sizes(count: int, total: int, rng: random.Random) -> list[int]:
    """``count`` sizes from 4 KiB to about 2x the mean, summing to ``total``."""
    weights = [rng.uniform(0.05, 1.95) for _ in range(count)]
    scale = total / sum(weights)
    return [max(4096, int(w * scale)) for w in weights]


def write_version(folder: Path, sizes: list[int], changed: list[int]) -> None:
    for i in changed:
        path = folder / f"run {i // 100:02d}" / f"mesure-{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(sizes[i]))


def release(python: Path, root: Path, folder: Path, version: str, work: Path,
            workspace: str = "Global Public Workspace") -> float:
    spec = work / "actions.json"
    spec.write_text(json.dumps([{"do": "release", "root": str(root), "workspace": workspace,
                                 "title": "calib", "version": version, "folder": str(folder)}]))
    start = time.perf_counter()
    subprocess.run([str(python), str(HELPER), str(spec)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def stored_bytes(root: Path) -> tuple[int, int]:
    """Bytes and number of files below ``root``."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def archive_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "archive", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--gib", type=float, default=1.1)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--no-second-workspace", dest="second", action="store_false")
    parser.add_argument("--quick", action="store_true", help="100 files, 0.05 GiB, 3 versions")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.files, args.gib, args.versions = 100, 0.05, 3
    python = rmellipse_python()
    work = Path(tempfile.mkdtemp(prefix="bench-rme-", dir=args.workdir))
    try:
        run(args, python, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, python: Path, work: Path) -> None:
    rng = random.Random(7)
    root, folder, store = work / "rme", work / "src", work / "store"
    root.mkdir()
    (root / ".rmearchive").touch()
    sizes = file_sizes(args.files, int(args.gib * 2**30), rng)
    build = 0.0
    for v in range(args.versions):
        changed = range(args.files) if v == 0 else rng.sample(range(args.files), args.files // 10)
        write_version(folder, sizes, list(changed))
        build += release(python, root, folder, f"1.{v}.0", work)
    if args.second:
        build += release(python, root, folder, f"1.{args.versions - 1}.0", work, "Metrology Group")
    before, before_files = stored_bytes(root)
    content = stored_bytes(folder)[0]
    also = ", the last also in a second workspace" if args.second else ""
    print(f"rmellipse archive: {args.versions} versions of {args.files} files ({content / 2**30:.2f} GiB each){also},"
          f" built by rmellipse in {build:.1f} s")
    print(f"stored before (rmellipse): {before / 2**30:.3f} GiB in {before_files} files")
    subprocess.run(archive_cmd("init", str(store)), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["sync"], check=True)
    first = run_timed(archive_cmd("-a", str(store), "import", str(root), "--from", "rmellipse"))
    after, after_files = stored_bytes(store)
    again = run_timed(archive_cmd("-a", str(store), "import", str(root), "--from", "rmellipse"))
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(root), str(work / "copy")], check=True)
    subprocess.run(["sync"], check=True)
    copy = time.perf_counter() - start
    print(f"archive import: {first.seconds:.1f} s ({before / 2**20 / first.seconds:.0f} MiB/s of rmellipse archive"
          f" read and checked), peak memory {first.max_rss_kib / 1024:.0f} MiB")
    print(f"archive import again (nothing new): {again.seconds:.2f} s")
    print(f"anchor, cp -r of the rmellipse archive then sync: {copy:.1f} s")
    print(f"stored after (ours): {after / 2**30:.3f} GiB in {after_files} files"
          f" ({100 * after / before:.1f} % of before)")


if __name__ == "__main__":
    main()
