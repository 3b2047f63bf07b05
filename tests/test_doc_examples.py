"""The examples of README.md and docs/*.md run, so that they stay true.

A fenced ``sh`` or ``python`` block is an example when the line before it (blank lines aside)
is ``<!-- example -->``, or when its info string says ``title="example"``::

    <!-- example -->
    ```sh
    archive push data/ calib 1.0.0
    ```

Each example runs alone, in a fresh temporary folder that is its current folder and its
``HOME``, with ``ARCHIVE_URL`` naming an empty archive made there, ``ARCHIVE_CACHE_DIR`` and
the XDG folders (config, data, cache) inside it, and the ``archive`` command of this checkout
first on ``PATH``. A shell example runs under ``bash -euo pipefail``, so any failing command
fails it; a Python example runs with this interpreter. It passes when it exits 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<info>.*)$")
_MARK = "<!-- example -->"
_LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}


@dataclass(frozen=True)
class Example:
    """One runnable block: where it is, its language and its code."""

    document: Path
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def find_examples(document: Path) -> list[Example]:
    """The marked blocks of ``document``, in order."""
    lines = document.read_text(encoding="utf-8").splitlines()
    examples, previous, index = [], "", 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            previous = lines[index].strip() or previous
            index += 1
            continue
        language = _LANGUAGES.get(opening["info"].split(" ")[0].strip())
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == opening["fence"]), len(lines))
        marked = previous == _MARK or 'title="example"' in opening["info"]
        if marked and language is not None:
            examples.append(Example(document, index + 1, language, "\n".join(lines[index + 1:end]) + "\n"))
        previous, index = "", end + 1
    return examples


EXAMPLES = [example for document in DOCUMENTS for example in find_examples(document)]


def test_the_readme_and_the_guide_have_examples() -> None:
    """Marking is what runs an example: a document losing its marks must not pass unnoticed."""
    by_document = {example.document.name for example in EXAMPLES}
    assert {"README.md", "guide.md"} <= by_document


def test_a_marked_block_is_found(tmp_path: Path) -> None:
    document = tmp_path / "x.md"
    document.write_text("text\n<!-- example -->\n\n```sh\necho hi\n```\n```sh\nnot marked\n```\n"
                        '```python title="example"\nprint(1)\n```\n<!-- example -->\n```text\nno language\n```\n')
    found = find_examples(document)
    assert [(e.line, e.language, e.code) for e in found] == [(4, "sh", "echo hi\n"), (10, "python", "print(1)\n")]


def _environment(folder: Path) -> dict[str, str]:
    """A user of their own: HOME, XDG folders, cache and archive all inside ``folder``."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "archive"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m archive "$@"\n')
    shim.chmod(0o755)
    keep = {key: os.environ[key] for key in ("LANG", "LC_ALL", "TMPDIR", "TERM") if key in os.environ}
    return {**keep, "HOME": str(folder), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT), "ARCHIVE_URL": str(folder / ".archive-store"),
            "ARCHIVE_CACHE_DIR": str(folder / ".cache" / "archive"), "XDG_CONFIG_HOME": str(folder / ".config"),
            "XDG_DATA_HOME": str(folder / ".local" / "share"), "XDG_CACHE_HOME": str(folder / ".cache"),
            "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.id for example in EXAMPLES])
def test_example_runs(example: Example, tmp_path: Path) -> None:
    folder = tmp_path / "example"
    folder.mkdir()
    env = _environment(folder)
    made = subprocess.run([sys.executable, "-m", "archive", "init", env["ARCHIVE_URL"]], env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    command = ["bash", "-euo", "pipefail", "-c", example.code] if example.language == "sh" \
        else [sys.executable, "-c", example.code]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (f"{example.id} exited {result.returncode}\n--- code\n{example.code}"
                                    f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}")
