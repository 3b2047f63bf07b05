"""OpenSSH as the SFTP transport: ``ssh HOST -s sftp`` as a child process, SFTP over its pipes.

This is how restic and borg reach SSH servers, and how OpenSSH's own ``sftp`` works: the
system ``ssh`` client does the network, the crypto (in C, on its own core) and everything
``ssh_config`` can say (ProxyJump, ControlMaster, IdentityFile, agent, known_hosts), and this
process only frames SFTP packets on the child's stdin and stdout: our own SFTP client
(:mod:`archive.backends.sftp_proto`) speaks the protocol over :class:`SSHPipe`.

``ssh`` runs with ``BatchMode=yes`` (it never prompts: passwords are left to paramiko's own
transport, see :mod:`archive.backends.sftp_conn`) and ``StrictHostKeyChecking=yes`` (an
unknown or changed host key is refused, as :mod:`archive.credentials` refuses it). Its stderr
goes to a temporary file that is read only to explain a failure, as one line.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from ..credentials import SSHTarget, ssh_dir
from ..ssh_login import probe_host_key
from ..errors import ArchiveError, AuthenticationError, BackendUnavailableError, HostKeyError
from .sftp_proto import SFTPClient, SFTPConnectionLost

logger = logging.getLogger(__name__)
#: The key files ssh tries by default (``ssh(1)``, ``-i``), looked up in ``$HOME/.ssh``.
DEFAULT_KEY_NAMES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa")
PIPE_SIZE = 1024 * 1024  # a bigger stdout pipe: fewer, larger reads of ssh's output
READ_BLOCK = 256 * 1024
SEND_BLOCK = 64 * 1024  # requests queued up to this size go to ssh in one write
STDERR_TAIL = 4096
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PREFIXES = re.compile(r"^(?:[a-z][a-z0-9_]*: )+")  # "ssh: ", "client_loop: ssh_packet_write_poll: "


class KeysRefusedError(AuthenticationError):
    """ssh could not log in without a password (no key or agent key was accepted)."""


def find_ssh() -> str | None:
    """The system ``ssh`` client, or None if there is none on ``PATH``."""
    return shutil.which("ssh")


def ssh_command(ssh: str, target: SSHTarget, host: str, user: str | None, port: int | None,
                command: str | None = None, options: Sequence[str] = ()) -> list[str]:
    """The argv that opens an SFTP session to ``host`` as ssh itself would, never prompting;
    with ``command``, the argv that runs that shell command there instead (no terminal);
    ``options`` (``-o NAME=VALUE``...) go before the host (:mod:`~archive.backends.sftp_mux`'s).

    ``host``, ``user`` and ``port`` are what the URL said (ssh applies ``~/.ssh/config`` to
    them itself); ``target`` is the same host resolved by :func:`archive.credentials.resolve_target`,
    used for the files of a ``$HOME`` that is not the account's home (see :func:`home_options`).
    The host comes after ``--``, so a host name can never be taken for an option.
    """
    argv = [ssh, "-x", "-a", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={math.ceil(target.connect_timeout)}", "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4", "-o", "ClearAllForwardings=yes",
            *config_options(target, user, port), *options]
    if command is not None:
        return argv + ["-T", "--", host, command]
    return argv + ["-s", "--", host, "sftp"]


def config_options(target: SSHTarget, user: str | None, port: int | None) -> list[str]:
    """The options of :func:`ssh_command` that decide which configuration applies to the host
    (the files of :func:`home_options`, the port and the user): what ``ssh -G`` needs too."""
    options = home_options(target)
    if port:
        options += ["-p", str(port)]
    if user:
        options += ["-l", user]
    return options


def home_options(target: SSHTarget) -> list[str]:
    """Options that make ssh read ``$HOME/.ssh`` when ``$HOME`` is not the account's home.

    ssh looks for its config, known_hosts and default keys in the home folder of the passwd
    entry and ignores ``$HOME``; this backend (like paramiko) follows ``$HOME``. When the two
    differ (tests, or a user who points ``$HOME`` elsewhere) ssh is told the files explicitly:
    the config (or none, so the account's own does not apply), the known_hosts files resolved
    from that config, and the default key files. Otherwise ssh is left to its own defaults.
    """
    if _account_home() in (None, Path.home().resolve()):
        return []
    home = ssh_dir()
    config = home / "config"
    known = " ".join(_quoted(path) for path in target.known_hosts_files)
    options = ["-F", str(config) if config.is_file() else os.devnull, "-o", f"UserKnownHostsFile={known}"]
    for name in DEFAULT_KEY_NAMES:
        options += ["-o", f"IdentityFile={_quoted(str(home / name))}"]
    return options


def _account_home() -> Path | None:
    try:
        import pwd

        return Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()
    except (ImportError, KeyError):
        return None


def _quoted(path: str) -> str:
    return f'"{path}"' if " " in path else path


class SSHPipe:
    """The byte stream of an ``ssh -s sftp`` child that :class:`~archive.backends.sftp_proto.SFTPClient` talks over.

    The client needs ``recv`` and ``send_parts``. ``is_active`` and ``close`` match
    :class:`paramiko.Transport`, so a
    connection treats both transports alike. ssh runs in a session of its own, so a Ctrl-C at
    the terminal reaches this process only and a write can still remove its temporary file.

    A read or write that waits longer than :attr:`timeout` seconds raises :class:`TimeoutError`
    (a server that stopped answering); the pipes are non-blocking, so this costs a ``select``
    only when there is nothing to read or no room to write.
    """

    def __init__(self, argv: list[str], name: str, timeout: float | None = None,
                 on_stall: Callable[[], None] | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self._on_stall = on_stall  # called before a TimeoutError: the connection may have stalled
        self._stderr = tempfile.TemporaryFile()
        self._sock, theirs = socket.socketpair()  # ssh's stdin: as OpenSSH's sftp feeds it (faster writes here)
        try:
            self._proc = subprocess.Popen(argv, stdin=theirs, stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0,
                                          start_new_session=True)
        except BaseException:
            self._sock.close()
            raise
        finally:
            theirs.close()
        self._in, self._out = self._sock.fileno(), self._proc.stdout.fileno()
        _grow_pipe(self._out)
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        self._buffer, self._pos, self._eof = b"", 0, False
        self._queued = bytearray()
        self._stderr_tail = ""
        logger.debug("started ssh (pid %d) for %s", self._proc.pid, name)

    def send_parts(self, *parts: bytes | memoryview) -> None:
        """Send ``parts`` as one message; a large one goes straight out with ``writev``, so the
        data of a write request is never copied in this process.

        A small one is queued and goes out with the next :meth:`recv` or once enough has
        queued: requests sent before a reply is awaited (write, fsync, fstat, close of a small
        file; a window of reads) then reach ssh in one write, one SSH packet instead of
        several, and fewer wake-ups of ssh and sshd, which is most of the cost of many small files.
        """
        size = sum(len(part) for part in parts)
        if len(self._queued) + size <= SEND_BLOCK:
            for part in parts:
                self._queued += part
            return
        self._flush()
        if size <= SEND_BLOCK:
            for part in parts:
                self._queued += part
            return
        self._write_all([memoryview(part).cast("B") for part in parts])

    def _flush(self) -> None:
        if self._queued:
            queued, self._queued = self._queued, bytearray()
            self._write_all([memoryview(queued)])

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes (the caller loops for the rest); a large ``n`` is read whole, in one
        join, so a data packet is not pieced together by repeated concatenation."""
        self._flush()
        if self._pos >= len(self._buffer) and n < READ_BLOCK:
            self._buffer, self._pos = self._read(READ_BLOCK), 0
        if self._pos < len(self._buffer):
            end = min(self._pos + n, len(self._buffer))
            data = self._buffer[self._pos:end] if (self._pos, end) != (0, len(self._buffer)) else self._buffer
            self._pos = end
            if len(data) == n or n < READ_BLOCK:
                return data
            return data + self._read_exactly(n - len(data))
        return self._read_exactly(n)

    def _read_exactly(self, n: int) -> bytes:
        """``n`` bytes straight from ssh's stdout (fewer at the end of the stream)."""
        parts, missing = [], n
        while missing:
            part = self._read(missing)
            if not part:
                break
            parts.append(part)
            missing -= len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not data:
            self._eof = True
        return data

    def _read(self, n: int) -> bytes:
        """Up to ``n`` bytes from ssh's stdout, waiting at most :attr:`timeout` for the first."""
        while True:
            try:
                return os.read(self._out, n)
            except BlockingIOError:
                self._wait(self._out, write=False)

    def _write_all(self, views: list[memoryview]) -> None:
        """``writev`` until every byte of ``views`` is out (a pipe may take part of it)."""
        while views:
            try:
                written = os.writev(self._in, views)
            except BlockingIOError:
                self._wait(self._in, write=True)
                continue
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]

    def _wait(self, fd: int, write: bool) -> None:
        ready = select.select([], [fd], [], self.timeout) if write else select.select([fd], [], [], self.timeout)
        if not any(ready):
            if self._on_stall is not None:
                self._on_stall()
            raise TimeoutError(f"no reply from the server in {self.timeout:g} s")

    @property
    def pid(self) -> int:
        """The process id of the ssh child."""
        return self._proc.pid

    def is_active(self) -> bool:
        return not self._eof and self._proc.poll() is None

    def hang_up(self) -> None:
        """Send ssh EOF without waiting for it to exit: :meth:`close` then waits. A pool hangs
        up all its sessions first, so that they end side by side rather than one after another."""
        self._queued.clear()  # requests nobody waits for
        for stream in (self._sock, self._proc.stdout):
            try:
                stream.close()
            except OSError as exc:  # a broken pipe while flushing: the session is gone anyway
                logger.debug("closing a pipe to ssh: %s", exc)

    def close(self) -> None:
        """End the session: ssh sees EOF and exits (one that hangs is killed); keep its last words."""
        if self._stderr.closed:
            return
        self.hang_up()
        try:  # ssh exits on EOF at once unless its server stopped answering: not worth a long wait
            self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._eof = True
        self._stderr_tail = self._read_stderr()
        self._stderr.close()
        if self._stderr_tail.strip():
            logger.debug("ssh (pid %d) said: %s", self._proc.pid, " | ".join(self._stderr_tail.splitlines()[-4:]))

    def stderr_text(self) -> str:
        """The end of what ssh wrote to stderr (complete once it exited), to explain a failure."""
        return self._stderr_tail if self._stderr.closed else self._read_stderr()

    def _read_stderr(self) -> str:
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - STDERR_TAIL))
        return self._stderr.read().decode("utf-8", "replace")

    def reason(self) -> str:
        """One line on why the session ended, from ssh's own words when it said any."""
        self.close()
        return ssh_reason(self.stderr_text()) or "connection lost"


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError as exc:  # over /proc/sys/fs/pipe-max-size: the default size works, slower
        logger.debug("cannot grow a pipe to ssh: %s", exc)


def open_pipe_sftp(argv: list[str], target: SSHTarget,
                   on_stall: Callable[[], None] | None = None) -> tuple[SSHPipe, SFTPClient]:
    """Start ssh and the SFTP session over it; failures become one-line archive errors.
    ``on_stall``: see :class:`SSHPipe` (a session over a shared connection stops it).

    ssh's ``ConnectTimeout`` bounds reaching the server; login and the start of SFTP get as
    long again (ssh says nothing on its stdout until SFTP answers), so a server that accepts
    and then stays silent is given up after twice ``target.connect_timeout``.

    Raises
    ------
    HostKeyError
        ssh refused the host key (unknown or changed).
    KeysRefusedError
        No key was accepted; a password login may still work (through paramiko).
    BackendUnavailableError
        The host cannot be reached, or it offers no SFTP service.
    """
    pipe = SSHPipe(argv, f"ssh:{target.account}", timeout=2 * target.connect_timeout, on_stall=on_stall)
    try:
        return pipe, SFTPClient(pipe).start()
    except TimeoutError as exc:
        pipe.close()
        raise BackendUnavailableError(f"cannot reach {target.hostname}:{target.port}: no SFTP session within"
                                      f" {pipe.timeout:g} s") from exc
    except SFTPConnectionLost as exc:
        if not pipe.is_active():  # ssh exited: its stderr says why
            pipe.close()
            raise startup_error(pipe.stderr_text(), target) from exc
        pipe.close()
        raise BackendUnavailableError(f"cannot reach {target.hostname}: {exc}") from exc
    except (EOFError, OSError) as exc:
        pipe.close()
        raise startup_error(pipe.stderr_text(), target) from exc
    except BaseException:
        pipe.close()
        raise


def startup_error(stderr: str, target: SSHTarget) -> ArchiveError:
    """The archive error for an ssh that exited before SFTP started, from its stderr."""
    logger.debug("ssh to %s failed: %s", target.account, " | ".join(stderr.split("\n")[-6:]))
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return host_key_error(stderr, target)
    if "Permission denied" in stderr:
        return KeysRefusedError(f"{target.account}: authentication failed (no key or password was accepted)")
    if "subsystem request failed" in stderr:
        return BackendUnavailableError(f"cannot reach {target.hostname}: the server offers no SFTP service")
    reason = ssh_reason(stderr) or "ssh exited"
    return BackendUnavailableError(f"cannot reach {target.hostname}:{target.port}: {reason}")


def host_key_error(stderr: str, target: SSHTarget) -> ArchiveError:
    """The same one-line refusal as paramiko's check gives, fingerprint included.

    OpenSSH names the fingerprint only for a changed key, so the key is fetched once more
    directly (never trusted: only shown). Behind a ProxyJump or ProxyCommand, or if that
    fails, the message says how to check and trust the key with ssh itself.
    """
    if not target.proxy_jump:
        try:
            probe_host_key(target)
        except HostKeyError as exc:
            return exc
        except BackendUnavailableError as exc:
            logger.debug("cannot fetch the host key of %s to show it: %s", target.hostname, exc)
    port = "" if target.port == 22 else f"-p {target.port} "
    shown = re.search(r"SHA256:[A-Za-z0-9+/=]+", stderr)
    changed = "CHANGED" in stderr
    what = f"has CHANGED (now {shown.group(0)}); this may be an attack" if changed and shown else "is not trusted"
    return HostKeyError(f"host key of {target.host_key_name} {what}: check it and trust it by connecting once"
                        f" with: ssh {port}{target.alias}")


def ssh_reason(stderr: str) -> str:
    """The last line ssh wrote, without prefixes such as ``ssh:``, ``client_loop:`` or
    ``connect to host ... port ...:`` that name ssh's internals rather than the cause."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("debug")]
    if not lines:
        return ""
    line = _PREFIXES.sub("", lines[-1])
    if line.startswith("connect to host") and ": " in line:
        line = line.rsplit(": ", 1)[1]
    return " ".join(line.split())
