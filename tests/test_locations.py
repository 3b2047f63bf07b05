"""Locations: a password in a URL never shows, however it is typed, in any message of any scheme."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archive.locations import password_of, redact

SECRET = "Zq7-secret"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive", *args], capture_output=True, text=True,
                          env={**os.environ, "ARCHIVE_SFTP_TRANSPORT": "paramiko"}, timeout=60)


@pytest.mark.parametrize("url, shown", [
    ("sftp://u:p@ss@host/x", "sftp://u:***@host/x"),
    ("sftp://u:pa/ss@host/x", "sftp://u:***@host/x"),
    ("sftp://u:p#w@host:99x/x", "sftp://u:***@host:99x/x"),
    ("sftp://u:p?w@host/x", "sftp://u:***@host/x"),
    ("sftp://u:p/a@b@host:22/x", "sftp://u:***@host:22/x"),
    ("sftp://u:p@host/a@b", "sftp://u:***@b"),  # hidden from the last "@": it may be the password's
    ("sftp://u:p/w@[::1]:22/x", "sftp://u:***@[::1]:22/x"),
    ("gopher://ann:p/w@host/x", "gopher://ann:***@host/x"),
    ("sftp://u@host/a@b", "sftp://u@host/a@b"),
    ("sftp://host/a@b", "sftp://host/a@b"),
    ("/data/u:p@x", "/data/u:p@x"),
])
def test_redact_finds_passwords_typed_unencoded(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_redact_hides_more_rather_than_less() -> None:
    """A port and a path with '@' cannot be told from a password with '/': it is hidden."""
    assert redact("sftp://u:1234/5@host/x") == "sftp://u:***@host/x"
    assert "22" not in redact("sftp://host:22/a@b")
    assert redact("sftp://u:p/a@host/x@y") == "sftp://u:***@y"


_PASSWORD_CHARS = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)


@given(password=_PASSWORD_CHARS, port=st.sampled_from(["", ":22", ":99x"]),
       path=st.sampled_from(["/x", "/a@b", "/~/p", ""]))
def test_redact_never_shows_the_password(password: str, port: str, path: str) -> None:
    after = f"host{port}{path}"
    url = f"sftp://user:{password}@{after}"
    shown = redact(url)
    assert shown.startswith("sftp://user:***@")
    assert after.endswith(shown[len("sftp://user:***@"):])  # what is left shown is no part of the password
    assert password_of(url).startswith(password)  # all of it, or more when in doubt


@pytest.mark.parametrize("password", ["se#cr" + SECRET, "se?cr" + SECRET, "se/cr" + SECRET, "p@" + SECRET,
                                      SECRET + "%2F"])
@pytest.mark.parametrize("rest", ["host:99x/x", "-host/x", "host", "host:70000/x"])
def test_no_error_shows_a_password(password: str, rest: str) -> None:
    """Bad ports, bad hosts and missing paths are refused in one line that hides the password;
    with -v (a traceback) too."""
    for verbose in ([], ["-v"]):
        result = run(*verbose, "-a", f"sftp://u:{password}@{rest}", "ls")
        assert result.returncode == 1, result
        assert SECRET not in result.stderr and SECRET not in result.stdout
        assert result.stderr.strip().splitlines()[-1].startswith("archive: error: ")
        if not verbose:
            assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("url", [f"file://u:{SECRET}@h/x", f"file://u:se/{SECRET}@h/x",
                                 f"gopher://u:p#{SECRET}@h/x"])
def test_other_schemes_hide_the_password(url: str) -> None:
    result = run("-a", url, "ls")
    assert result.returncode == 1 and result.stderr.startswith("archive: error: ")
    assert SECRET not in result.stderr


def test_percent_encoding_is_suggested() -> None:
    result = run("-a", f"sftp://u:a/{SECRET}@host/x", "ls")
    assert "percent-encode" in result.stderr and SECRET not in result.stderr
