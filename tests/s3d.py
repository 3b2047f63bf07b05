"""A real S3 server on 127.0.0.1 for the S3 backend tests and the benchmark: moto's ``moto_server``.

moto is started as a child process on a free loopback port. It enforces ``If-None-Match: *``
on PUT and on completing a multipart upload (412), which the backend's exclusive writes rely
on. By default it checks no credentials. ``start_s3_server(folder, authenticate=True)`` turns
request authentication on (``INITIAL_NO_AUTH_ACTION_COUNT``): the first three requests, made
here, create an IAM user with an allow-all policy and its access key, and from then on every
request must be signed with that key, so wrong credentials are refused as a real S3 refuses
them (403 ``InvalidAccessKeyId`` / ``SignatureDoesNotMatch``). That server is for the
credentials tests only: moto 5.2 computes the signature of a request whose query holds a
``/`` (a listing with ``Delimiter=/``) wrongly and refuses it.

:func:`start_s3_server` / :func:`stop_s3_server` work outside pytest (``bench/s3_clients.py``
uses them); the ``s3_server`` fixture holds one server for the session, and ``s3_bucket`` gives
each test a fresh bucket and an environment in which only the test's credentials exist: the
user's real ``~/.aws`` is never read (``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_CONFIG_FILE``
point into the test's tmp folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.sshd import free_port

REGION = "us-east-1"
UNAUTHENTICATED_SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass
class S3Server:
    """A running moto server and the one access key it accepts."""

    port: int
    access_key: str
    secret_key: str = field(repr=False)
    process: subprocess.Popen = field(repr=False)
    log: Path = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that give a client this server's credentials and region."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": REGION}

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 S3 client of this server (path-style addressing), for arranging what it holds."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(s3={"addressing_style": "path"}))

    def location(self, bucket: str, prefix: str = "", **params: str) -> str:
        """``s3://bucket/prefix?endpoint=...`` for this server."""
        query = "&".join(f"{k}={v}" for k, v in {"endpoint": self.endpoint, **params}.items())
        return f"s3://{bucket}/{prefix}?{query}"


def moto_command() -> list[str]:
    """How to start moto's server: its console script, else the module through this Python."""
    found = shutil.which("moto_server")
    return [found] if found else [sys.executable, "-m", "moto.server"]


def start_s3_server(folder: Path, authenticate: bool = False) -> S3Server:
    """Start ``moto_server`` on 127.0.0.1, logging into ``folder``; ``authenticate``: see above."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "moto.log"
    env = dict(os.environ)
    if authenticate:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(UNAUTHENTICATED_SETUP_CALLS)
    with open(log, "wb") as out:
        process = subprocess.Popen([*moto_command(), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_up(port, process, log)
        access_key, secret_key = _make_access_key(port) if authenticate else ("test-access-key", "test-secret")
    except BaseException:
        _stop(process)
        raise
    return S3Server(port, access_key, secret_key, process, log)


def stop_s3_server(server: S3Server) -> None:
    """Stop exactly the server process :func:`start_s3_server` started."""
    _stop(server.process)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_until_up(port: int, process: subprocess.Popen, log: Path) -> None:
    """Wait for the server's health page (``/moto-api/``, which is not an S3 call)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on port {port} within 30 s")


def _make_access_key(port: int) -> tuple[str, str]:
    """The IAM user and key every later (authenticated) request uses."""
    import boto3

    iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="archive-test")
    iam.put_user_policy(UserName="archive-test", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
    key = iam.create_access_key(UserName="archive-test")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def new_bucket(server: S3Server) -> str:
    """Create a bucket with a fresh name and return the name."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("moto"))
    yield server
    stop_s3_server(server)


@pytest.fixture
def s3_env(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process and its children see only the test server's credentials: no ``~/.aws``."""
    aws = tmp_path / "aws"
    aws.mkdir()
    (aws / "credentials").write_text("")
    (aws / "config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws / "config"))
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A fresh, empty bucket on the session's server."""
    return new_bucket(s3_env)


@pytest.fixture
def s3_location(s3_env: S3Server, s3_bucket: str) -> str:
    """An initialized archive below ``s3://<fresh bucket>/store``, as a user would type it."""
    import archive

    url = s3_env.location(s3_bucket, "store")
    archive.get_interface(url, create=True).close()
    return url
