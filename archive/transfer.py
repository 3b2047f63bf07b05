"""Parallel transfers with progress: the only module that knows tqdm.

Publish and download hand a list of jobs to :func:`run_jobs`; each job moves one blob and
reports bytes through a :class:`Progress`. Hashing in ``hashlib`` and I/O release the GIL, so
threads give real parallelism here. The first failure cancels the jobs not yet started, waits
for the running ones (whose writers clean up their temporary files) and is raised as is.
Transient backend failures (:class:`BackendUnavailableError`) are retried with backoff.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from .errors import BackendUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_ATTEMPTS = 4
RETRY_BASE_DELAY = 0.5


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
        """Called by jobs as bytes move (from any thread)."""
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


class TqdmProgress(Progress):
    """A tqdm bar on stderr: bytes as the bar, files as a postfix."""

    def __init__(self, description: str, total_bytes: int, total_files: int) -> None:
        super().__init__(description, total_bytes, total_files)
        from tqdm import tqdm  # imported here: the CLI starts faster without it

        self._bar = tqdm(total=total_bytes, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                         file=sys.stderr, leave=False, dynamic_ncols=True, postfix=f"0/{total_files} files")

    def _show_bytes(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def _show_files(self) -> None:
        self._bar.set_postfix_str(f"{self.files_done}/{self.total_files} files", refresh=False)

    def close(self) -> None:
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

    Jobs are handed to the threads a few at a time, not all at once, so 10,000 small files
    do not hold 10,000 pending futures. On the first exception no further job starts;
    running ones finish, then it is raised.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    results: list[T] = [None] * len(jobs)  # type: ignore[list-item]
    queued = iter(enumerate(jobs))
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="archive") as pool:
        running: dict[Future[T], int] = {}
        stop = threading.Event()  # set on Ctrl-C: running jobs end at their next chunk

        def submit_more() -> None:
            for index, job in queued:
                running[pool.submit(_run_job, job, stop)] = index
                if len(running) >= 2 * workers:
                    return

        try:
            submit_more()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    if future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
                    results[index] = future.result()
                submit_more()
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted: the running jobs stop too
                stop.set()
            for future in running:  # those not started yet never will; the pool waits for the rest
                future.cancel()
            raise
    return results


_job = threading.local()  # the stop event of the run_jobs that runs this thread's job


def _run_job(job: Callable[[], T], stop: threading.Event) -> T:
    _job.stop = stop
    try:
        return job()
    finally:
        _job.stop = None


def check_interrupted() -> None:
    """Raise KeyboardInterrupt in a job thread once the command was interrupted (Ctrl-C reaches
    only the main thread, and it waits for running jobs: without this, for whole files)."""
    stop = getattr(_job, "stop", None)
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


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
