"""archive.transfer.run_jobs: results in order, the first failure stops further jobs, contexts joined.

run_jobs is the scheduler under every parallel push and pull; these tests pin what its callers
rely on (the publish and download tests exercise it end to end).
"""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from archive.errors import TransferInterruptedError
from archive.transfer import check_interrupted, run_jobs

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


def test_results_come_back_in_the_order_of_the_jobs() -> None:
    jobs = [lambda i=i: (time.sleep(0.001 * (i % 3)), i)[1] for i in range(200)]
    assert run_jobs(jobs, 8) == list(range(200))


def test_jobs_run_on_several_threads_at_once() -> None:
    """Eight jobs that each wait for all eight: they finish only if they run together."""
    barrier = threading.Barrier(8, timeout=10)
    assert sorted(run_jobs([barrier.wait for _ in range(8)], 8)) == list(range(8))  # each its own arrival index


def test_no_job_starts_after_the_first_failure_and_it_is_raised() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            started.append(i)
        if i == 5:
            raise ValueError("job 5 failed")
        time.sleep(0.01)
        return i

    with pytest.raises(ValueError, match="job 5 failed"):
        run_jobs([lambda i=i: job(i) for i in range(1000)], 4)
    assert 5 in started
    assert len(started) < 20  # the threads stop taking jobs once one failed


def test_jobs_run_in_the_callers_context_and_see_the_stop_event() -> None:
    """Each job sees the caller's context variables, and check_interrupted() works inside it."""
    token = _seen.set("caller")
    try:
        def job() -> str:
            check_interrupted()  # not interrupted: returns
            return _seen.get()

        assert run_jobs([job] * 50, 4) == ["caller"] * 50
    finally:
        _seen.reset(token)


def test_a_keyboard_interrupt_in_a_job_stops_the_running_ones() -> None:
    """A job that raises KeyboardInterrupt sets the stop event: the others end at their next check."""
    ended: list[str] = []

    def long_job() -> None:
        for _ in range(500):
            try:
                check_interrupted()
            except TransferInterruptedError:
                ended.append("stopped")
                raise
            time.sleep(0.01)
        ended.append("ran to the end")

    def interrupting() -> None:
        time.sleep(0.05)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs([long_job, long_job, interrupting], 3)
    assert ended == ["stopped", "stopped"]
