"""Starting a helper process: a few lines of Python that do system calls on a core of their own.

A thread of this process that makes many short system calls hands the interpreter's lock to
and fro with the thread that makes the others, and at 100,000 files the handovers cost more
than the calls. A helper process has a lock of its own. It is the same interpreter, run
isolated (``-I -S``: no site, no environment, no current folder on its path), given the
descriptors it needs, in a session of its own (a Ctrl-C on the terminal is for the command,
which ends it) and, on Linux, killed when the thread that started it dies, so it never outlives
the command by more than the call it is making.

Every user of a helper does the work itself when the helper cannot start, stops early or says
something it would never say: a helper costs time or saves it, it never decides a result.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import Sequence

logger = logging.getLogger(__name__)

#: The start of every helper's code. Its first argument is the pid of the process that
#: started it: if that is gone already, the helper exits (status 3) before doing anything.
PRELUDE = r"""
import os, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the thread that started us
except (ImportError, OSError, AttributeError):  # no ctypes, no C library, or no prctl (not Linux)
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(3)  # that thread is gone already
"""


def start_helper(code: str, args: Sequence[str] = (), pass_fds: Sequence[int] = (),
                 stdin: int | None = subprocess.PIPE, stdout: int | None = subprocess.PIPE
                 ) -> subprocess.Popen[bytes] | None:
    """Run :data:`PRELUDE` then ``code`` in a helper (its input and output on pipes unless
    told otherwise); ``args`` follow the parent's pid in its ``sys.argv``. None (logged at
    DEBUG) when no helper can be had: this interpreter is not a program that runs ``-I -S -c``,
    or the start failed."""
    python = python_program()
    if python is None:
        return None
    try:
        return subprocess.Popen([python, "-I", "-S", "-c", PRELUDE + code, str(os.getpid()), *args],
                                stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL,
                                pass_fds=tuple(pass_fds), start_new_session=True)
    except (OSError, ValueError) as exc:
        logger.debug("no helper process: %s", exc)
        return None


def stop_helper(helper: subprocess.Popen[bytes]) -> None:
    """Kill ``helper`` and reap it (after an interrupt, or when its answer is not needed)."""
    helper.kill()
    helper.wait()


def python_program() -> str | None:
    """This interpreter's program, if it is one that runs ``-I -S -c`` (an embedding program's
    ``sys.executable``, a server's for one, is not asked to)."""
    name = os.path.basename(sys.executable or "").lower()
    return sys.executable if re.fullmatch(r"(python|pypy)[0-9.]*(\.exe)?", name) else None
