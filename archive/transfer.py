"""Parallel transfers with progress: the only module that knows tqdm.

Publish and download hand a list of jobs to :func:`run_jobs`; each job moves one blob and
reports bytes through a :class:`Progress`. Hashing in ``hashlib`` and I/O release the GIL, so
threads give real parallelism here. The first failure cancels the jobs not yet started, waits
for the running ones (whose writers clean up their temporary files) and is raised as is.
Transient backend failures (:class:`BackendUnavailableError`) are retried with backoff.
On Ctrl-C (or SIGTERM, which the CLI turns into one) the running jobs stop too, at their next
chunk, with :class:`TransferInterruptedError`: their writers remove their temporary files as on
any error, and the command ends in moments instead of after every running file is done.

A shown bar is one phase ("hashing", "uploading", "downloading", "writing", "verifying"); when
it closes, its totals and duration are kept as a :class:`Phase` for the CLI's final line
(:func:`take_phases`).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from .errors import BackendUnavailableError, TransferInterruptedError

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_ATTEMPTS = 4
RETRY_BASE_DELAY = 0.5
#: Set by :func:`run_jobs` in the context its jobs run in; set() when they must stop.
_stop: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("archive_transfer_stop",
                                                                                default=None)


def check_interrupted() -> None:
    """Raise :class:`TransferInterruptedError` in a job whose :func:`run_jobs` was interrupted.

    Called per chunk through :meth:`Progress.advance`; costs one ``Event.is_set``.
    """
    stop = _stop.get()
    if stop is not None and stop.is_set():
        raise TransferInterruptedError("transfer interrupted")


class Progress:
    """Counts bytes and files of one transfer; silent. Subclassed by :class:`TqdmProgress`."""

    def __init__(self, description: str, total_bytes: int, total_files: int) -> None:
        self.description = description
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.bytes_done = 0
        self.files_done = 0
        self._lock = threading.Lock()

    def advance(self, nbytes: int) -> None:
        """Called by jobs as bytes move (from any thread); stops a job when interrupted."""
        check_interrupted()
        with self._lock:
            self.bytes_done += nbytes
            self._show_bytes(nbytes)

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1
            self._show_files()

    def close(self) -> None:
        """Called once the transfer ends, successfully or not."""

    def _show_bytes(self, nbytes: int) -> None:
        """Hook for subclasses; called under the lock."""

    def _show_files(self) -> None:
        """Hook for subclasses; called under the lock."""


@dataclass(frozen=True)
class Phase:
    """One shown progress bar, once closed: what moved and how long it took."""

    label: str
    bytes: int
    files: int
    seconds: float


_phases: deque[Phase] = deque(maxlen=64)  # bounded: a library user may never take them
_open_bars: set["TqdmProgress"] = set()
_bars_lock = threading.Lock()


def take_phases() -> list[Phase]:
    """The phases whose bars were shown and closed since the last call, oldest first."""
    with _bars_lock:
        taken = list(_phases)
        _phases.clear()
    return taken


def close_bars() -> None:
    """Close every bar still open, erasing its line (before a message after an interrupt)."""
    with _bars_lock:
        bars = list(_open_bars)
    for bar in bars:
        bar.close()


class TqdmProgress(Progress):
    """A tqdm bar on stderr: bytes as the bar, files as a postfix. Bytes are counted as they
    move (per chunk), so a single large file advances the bar too."""

    def __init__(self, description: str, total_bytes: int, total_files: int) -> None:
        super().__init__(description, total_bytes, total_files)
        from tqdm import tqdm  # imported here: the CLI starts faster without it

        self._started = time.monotonic()
        tqdm.monitor_interval = 0  # no monitor thread: a pull forks its place workers only while no thread runs
        self._bar = tqdm(total=total_bytes, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                         file=sys.stderr, leave=False, dynamic_ncols=True, postfix=f"0/{total_files} files")
        with _bars_lock:
            _open_bars.add(self)

    def _show_bytes(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def _show_files(self) -> None:
        self._bar.set_postfix_str(f"{self.files_done}/{self.total_files} files", refresh=False)

    def close(self) -> None:
        """Erase the bar (``leave=False``) and keep its :class:`Phase`; only the first call counts."""
        with _bars_lock:
            if self not in _open_bars:
                return
            _open_bars.discard(self)
            _phases.append(Phase(self.description, self.bytes_done, self.files_done,
                                 time.monotonic() - self._started))
        with self._lock:  # not while a worker thread draws it
            self._bar.close()


def make_progress(description: str, total_bytes: int, total_files: int,
                  show: bool | None = None) -> Progress:
    """A tqdm bar when ``show`` is True, or when it is None and stderr is a terminal."""
    if show is None:
        show = sys.stderr.isatty()
    cls = TqdmProgress if show and total_files else Progress
    return cls(description, total_bytes, total_files)


def run_jobs(jobs: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """Run jobs on up to ``workers`` threads; return their results in order.

    Each thread takes the next job itself when it is done with one, so a job costs one lock
    and no future: waiting on a set of futures for each finished job (``wait(FIRST_COMPLETED)``)
    cost about 0.1 ms of CPU per job under contention, 5 % of a small S3 GET. On the first
    exception no further job starts; running ones finish, then it is raised. On
    KeyboardInterrupt the running ones stop too, at their next chunk (see
    :func:`check_interrupted`).
    """
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    results: list[T] = [None] * len(jobs)  # type: ignore[list-item]
    queue = _JobQueue(jobs)
    context = contextvars.copy_context()
    context.run(_stop.set, queue.stop)
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="archive") as pool:
        threads = [pool.submit(queue.work, context, results) for _ in range(min(workers, len(jobs)))]
        try:
            for thread in threads:
                thread.result()
        except BaseException as exc:  # KeyboardInterrupt while waiting: the running jobs stop too
            queue.fail(exc)
            raise
    queue.raise_first()
    return results


class _JobQueue:
    """The jobs of one :func:`run_jobs`, taken in order by its threads until one fails."""

    def __init__(self, jobs: Sequence[Callable[[], T]]) -> None:
        self._queued = iter(enumerate(jobs))
        self._lock = threading.Lock()
        self._failures: list[BaseException] = []
        self.stop = threading.Event()

    def work(self, context: contextvars.Context, results: list) -> None:
        """Run jobs (each in a copy of ``context``) into ``results`` until none is left or one failed."""
        while True:
            with self._lock:
                item = None if self._failures else next(self._queued, None)
            if item is None:
                return
            try:
                results[item[0]] = context.copy().run(item[1])
            except BaseException as exc:
                self.fail(exc)
                return

    def fail(self, exc: BaseException) -> None:
        """Start no further job; a KeyboardInterrupt (not an ``Exception``) stops the running ones."""
        if not isinstance(exc, Exception):
            self.stop.set()
        with self._lock:
            self._failures.append(exc)

    def raise_first(self) -> None:
        if self._failures:
            raise self._failures[0]


def with_retries(action: Callable[[], T], what: str, attempts: int = RETRY_ATTEMPTS) -> T:
    """Run ``action``, retrying :class:`BackendUnavailableError` with exponential backoff."""
    for attempt in range(1, attempts + 1):
        check_interrupted()  # a job interrupted while it waited to retry ends here
        try:
            return action()
        except BackendUnavailableError as exc:
            if attempt == attempts:
                raise
            delay = RETRY_BASE_DELAY * 2 ** (attempt - 1)
            logger.warning("%s failed (%s); retry %d of %d in %.1f s", what, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def reporting(chunks: Iterable[bytes], advance: Callable[[int], None] | None) -> Iterator[bytes]:
    """Pass chunks through, telling ``advance`` (a progress callback) how many bytes went by."""
    for chunk in chunks:
        check_interrupted()
        if advance is not None:
            advance(len(chunk))
        yield chunk
