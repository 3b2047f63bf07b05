"""What the ``archive`` command needs to write safely to a terminal and to pipes.

Names, paths and metadata come from records someone else published: printed raw, an ESC or
C1 byte in them could move the cursor, rewrite earlier lines, set the window title, or (with a
bidi override) make a path read differently than it is. :func:`printable` escapes every such
code point, visibly, so nothing the CLI prints can drive the terminal. Signals and closed pipes
are handled here too, so that :mod:`archive.cli` holds only the commands.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import re
import select
import signal
import sys
import threading

import click

#: C0 controls (tab and newline too: one item is one line), DEL, C1 controls, the bidi
#: embeddings, overrides, isolates and marks, the line/paragraph separators, and lone
#: surrogates (undecodable file names), none of which has a visible glyph of its own.
_BEYOND_C0 = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
UNSAFE = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
#: In JSON text, C0 controls occur only as layout (json.dumps escapes them inside strings).
_UNSAFE_IN_JSON = re.compile(f"[{_BEYOND_C0}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` with every terminal-dangerous code point shown as ``\\xNN`` / ``\\uNNNN``.

    >>> printable("evil\\x1b]0;pwned\\x07.txt")
    'evil\\\\x1b]0;pwned\\\\x07.txt'
    >>> printable("naïve 日本")
    'naïve 日本'
    """
    return UNSAFE.sub(_escape, str(text))


def _escape_json(match: re.Match[str]) -> str:
    return "".join(f"\\u{unit:04x}" for unit in _utf16_units(match.group()))


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def printable_json(text: str) -> str:
    """JSON text from ``json.dumps(..., ensure_ascii=False)`` made safe for a terminal.

    ``json.dumps`` escapes only code points below 0x20; DEL, C1 controls and bidi overrides
    pass through raw. Outside strings JSON is plain ASCII, so escaping them as ``\\uXXXX``
    anywhere keeps the same JSON value.
    """
    return _UNSAFE_IN_JSON.sub(_escape_json, text)


class PrintableFormatter(logging.Formatter):
    """Log lines as ``archive: warning: message`` (``archive: message`` below WARNING), like
    the CLI's own errors and warnings, with the message made :func:`printable`."""

    def __init__(self) -> None:
        super().__init__("archive: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        if record.levelno >= logging.WARNING:
            record.message = f"{record.levelname.lower()}: {record.message}"
        return super().formatMessage(record)


def protect_streams() -> None:
    """Never die of a character the output encoding cannot hold (a Latin-1 locale, a
    ``PYTHONIOENCODING``): such characters are written as backslash escapes instead."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def stdout_is_unicode() -> bool:
    """True when stdout encodes every character (UTF-8, or UTF-16/32)."""
    try:
        return codecs.lookup(sys.stdout.encoding or "ascii").name.startswith("utf")
    except LookupError:
        return False


def stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (``archive ls | head -1``)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit cannot fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


class Interrupts:
    """SIGTERM and SIGHUP behave like Ctrl-C: KeyboardInterrupt in the main thread, so the same
    cleanup runs (temporary files removed, progress bars cleared); the exit status is then
    128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports it."""

    def __init__(self) -> None:
        self.signum = signal.SIGINT

    def install(self) -> None:
        """Install the handlers (from the main thread only: Python runs handlers there)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup and friends stay ignored
                signal.signal(signum, self._raise)

    def _raise(self, signum: int, frame: object) -> None:
        self.signum = signal.Signals(signum)
        raise KeyboardInterrupt

    @property
    def exit_status(self) -> int:
        return 128 + int(self.signum)


class FiniteFloat(click.FloatRange):
    """A float option in a range that also refuses ``nan`` (which compares false with every
    bound, so :class:`click.FloatRange` lets it through) and infinities."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def format_size(size: float) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
