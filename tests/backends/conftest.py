"""Fixtures of the backend tests: the real SSH parts live in :mod:`tests.sshd`, nginx in
:mod:`tests.httpd`, the S3 server in :mod:`tests.s3d`."""

from tests.httpd import httpd  # noqa: F401
from tests.s3d import s3_bucket, s3_env, s3_location, s3_server  # noqa: F401
from tests.sshd import (keyring_file, password_user, ssh_agent, ssh_home, ssh_key_home,  # noqa: F401
                        sshd)
