"""What a test does when this machine lacks something it needs."""

from __future__ import annotations

import os

import pytest


def unavailable(message: str) -> None:
    """A test needs something this machine lacks: skip it on a developer's machine, but fail in
    CI (``$CI`` set), where a missing package, server or privilege is a broken install step."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
