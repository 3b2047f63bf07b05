"""AES-GCM first where the processor has AES instructions: the ciphers ssh allows, in a faster order.

OpenSSH offers ``chacha20-poly1305@openssh.com`` first, the safe choice on a processor without
AES instructions. Nearly every processor in use has them (x86 since 2010, ARMv8's crypto
extension), and there AES-GCM costs a fraction of the CPU: sending 256 MiB through ``ssh`` on
loopback took 0.85 s of CPU (ssh and sshd together) with ``aes128-gcm@openssh.com`` against 1.2 s
with ``chacha20-poly1305``. A push of 64 files of 4 MiB is bound by that CPU (this process hashes
beside ssh's crypto on the same cores). Go's SSH library, which rclone uses, orders its ciphers
the same way on such processors.

Only the order changes, never the set: the list is the one ssh itself would use for the host
(``ssh -G``), with its AES-GCM ciphers moved to the front, and only when that list is ssh's
built-in default. A ``Ciphers`` line in the user's or the system's ssh configuration (a crypto
policy, say) is left exactly as it is, and so is every host where ssh's own order is asked for
with ``$ARCHIVE_SSH_AES_FIRST=0``. The server still picks from what both sides allow.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import Sequence

from ..errors import InvalidInputError

logger = logging.getLogger(__name__)
AES_FIRST_ENV = "ARCHIVE_SSH_AES_FIRST"
AES_GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
CONFIG_TIMEOUT = 10.0  # seconds ``ssh -G`` may take (it reads files and runs any ``Match exec``)


def aes_first_wanted() -> bool:
    """Whether ``$ARCHIVE_SSH_AES_FIRST`` allows reordering (the default: 1)."""
    value = os.environ.get(AES_FIRST_ENV, "1").strip()
    if value not in ("0", "1"):
        raise InvalidInputError(f"${AES_FIRST_ENV} must be 0 or 1, not {value!r}")
    return value == "1"


def cipher_options(ssh: str, config_options: Sequence[str], host: str) -> list[str]:
    """``["-o", "Ciphers=..."]`` putting AES-GCM first for ``host``, or ``[]`` to leave ssh's order.

    ``config_options``: the options the sessions pass that choose a configuration (``-F``,
    ``-p``, ``-l``, ``-o ...``), so that ``ssh -G`` sees the host as they will.
    """
    if not aes_first_wanted() or not has_aes_instructions():
        return []
    effective, default = _ciphers([ssh, "-G", *config_options, "--", host], [ssh, "-G", "-F", os.devnull, "--", host])
    if not effective or effective != default:
        logger.debug("ssh's cipher order left as configured for %s: %s", host, ",".join(effective) or "unknown")
        return []
    ordered = reordered(effective)
    return ["-o", "Ciphers=" + ",".join(ordered)] if ordered != effective else []


def reordered(ciphers: Sequence[str]) -> list[str]:
    """``ciphers`` with the AES-GCM ones first (in their own order), the rest as they were."""
    first = [name for name in ciphers if name in AES_GCM]
    return first + [name for name in ciphers if name not in AES_GCM]


def has_aes_instructions() -> bool:
    """Whether this processor has AES instructions: the ``aes`` flag of ``/proc/cpuinfo`` on
    Linux (x86's ``flags``, ARM's ``Features``); every Mac has had them since 2010."""
    if sys.platform == "darwin":
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                name, _, values = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return "aes" in values.split()
    except OSError:
        pass
    return False


def _ciphers(*argvs: list[str]) -> list[list[str]]:
    """The ``ciphers`` line of each ``ssh -G`` command's output, split; empty where ssh could not
    say. The commands run side by side (each takes a few milliseconds before the first login)."""
    started: list[subprocess.Popen | None] = []
    for argv in argvs:
        try:
            started.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL))
        except OSError as exc:
            logger.debug("%s: %s", " ".join(argv[:2]), exc)
            started.append(None)
    return [_listed(proc) for proc in started]


def _listed(proc: subprocess.Popen | None) -> list[str]:
    if proc is None:
        return []
    try:
        out, _ = proc.communicate(timeout=CONFIG_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        logger.debug("ssh -G took more than %g s", CONFIG_TIMEOUT)
        return []
    found = re.search(rb"^ciphers (\S+)$", out, re.MULTILINE)
    return found[1].decode("ascii", "replace").split(",") if proc.returncode == 0 and found else []
