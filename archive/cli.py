"""The ``archive`` command: publish and fetch releases from a shell.

This module owns the terminal. Results go to stdout; errors go to stderr as one line,
``archive: error: ...``, with exit status 1 (2 for usage errors; 128 + the signal number when
interrupted: 130 for Ctrl-C, 143 for SIGTERM). A traceback is shown only with ``-v``; an
exception that is not an :class:`ArchiveError` is a bug and keeps its traceback. Everything
printed from a record or a listing goes through :func:`~archive.terminal.printable`.

``-q`` keeps only errors and the data a command exists to print: the lines of ``ls`` and
``show``, and the folder ``pull`` prints. Reports of work done (``published ...``,
``verified ...``, ``removed ...``), warnings and progress are silent. Output cut short by a
closed pipe (``archive ls | head -1``) ends the command quietly with status 0: the reader had
all it wanted, and ``set -o pipefail`` scripts must not fail on it.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
import traceback
from pathlib import Path

import click

from . import __version__, jsonout
from .cli_files import part_options, pull_part, shown_with_previous
from .completion import COMPLETE_VAR, complete_names, complete_remotes, complete_versions
from .errors import ArchiveError
from .terminal import (Interrupts, PrintableFormatter, format_size, printable, printable_json,
                       protect_streams, silence_stdout, stdout_closed, stdout_is_unicode)

logger = logging.getLogger(__name__)
_verbosity = {"level": 0}
_interrupts = Interrupts()
#: The past tense of each progress phase, for the final line.
_DONE = {"hashing": "hashed", "uploading": "uploaded", "downloading": "downloaded", "writing": "wrote",
         "verifying": "verified", "mirroring": "mirrored", "importing": "imported"}
#: Back to the start of the line and clear it: the terminal's "^C" echo goes, the message stays.
_ERASE_LINE = "\r\x1b[K"
#: A grace period longer than this (about a century) is a typo, not a policy.
MAX_GRACE_HOURS = 1e6


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("--archive", "-a", "location", metavar="LOCATION", envvar="ARCHIVE_URL", shell_complete=complete_remotes,
              help="Archive folder, URL or name (archive remote) [default: $ARCHIVE_URL, else the configured"
              " default, else a local archive in your data folder].")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), default=None, help="Parallel transfers.")
@click.option("--verbose", "-v", count=True, help="More output; -v also shows tracebacks.")
@click.option("--quiet", "-q", is_flag=True,
              help="Only errors, and the data a command exists to print (ls, show, the folder of pull).")
@click.option("--progress/--no-progress", default=None, help="Progress bars [default: on a terminal].")
@click.version_option(__version__, prog_name="archive")
@click.pass_context
def cli(ctx: click.Context, location: str | None, jobs: int | None, verbose: int, quiet: bool,
        progress: bool | None) -> None:
    """Publish folders as immutable, versioned releases and fetch them back by version range."""
    _verbosity["level"] = -1 if quiet else verbose
    _configure_logging(_verbosity["level"])
    ctx.obj = {"location": location, "jobs": jobs, "progress": False if quiet else progress}
    if ctx.invoked_subcommand is None:  # bare `archive`: the help, as asked for, not an error
        click.echo(ctx.get_help())


def _configure_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter())
    root = logging.getLogger("archive")
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if level < 0 else logging.WARNING if level == 0
                  else logging.INFO if level == 1 else logging.DEBUG)


def _report(text: str) -> None:
    """Print a report of work done on stdout, made printable; silent under ``-q``."""
    if _verbosity["level"] >= 0:
        click.echo(printable(text))


def _note(text: str) -> None:
    """Print a note about work done on stderr (stdout holds a command's data), made printable;
    silent under ``-q``."""
    if _verbosity["level"] >= 0:
        click.echo(printable(text), err=True)


def _echo_json(value: object) -> None:
    """Print ``value`` as indented JSON on stdout: the ``--json`` output of a command (docs/json.md)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=not stdout_is_unicode())
    click.echo(printable_json(text))


def _complain(kind: str, text: str) -> None:
    """Print ``archive: error: ...`` or ``archive: warning: ...`` on stderr (warnings not under -q)."""
    if kind == "error" or _verbosity["level"] >= 0:
        click.echo(f"archive: {kind}: {printable(text)}", err=True)


def _open(ctx: click.Context):
    from .locations import get_interface

    return get_interface(ctx.obj["location"])


@cli.command()
@click.argument("location")
def init(location: str) -> None:
    """Create an empty archive at LOCATION (a folder path or URL)."""
    from .locations import get_interface

    with get_interface(location, create=True) as arc:
        _report(f"archive ready at {arc.location}")


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("name")
@click.argument("version")
@click.option("--message", "-m", help="What this release is.")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata to record (repeatable).")
@click.option("--author", default=None, help="Who publishes [default: your user name].")
@click.option("--exclude", "-x", "exclude", multiple=True, metavar="GLOB",
              help="Leave out paths matching GLOB, in gitignore syntax like .archiveignore (repeatable).")
@click.pass_context
def push(ctx: click.Context, folder: Path, name: str, version: str, message: str | None,
         meta: tuple[str, ...], author: str | None, exclude: tuple[str, ...]) -> None:
    """Publish FOLDER as release NAME VERSION.

    Left out: a top-level .archive folder, and paths matched by --exclude or by the
    gitignore patterns of FOLDER/.archiveignore.
    """
    metadata = _parse_meta(meta)
    metadata.setdefault("author", author or _user_name())
    if message is not None:
        metadata["message"] = message
    from .publish import PublishStats

    stats = PublishStats()
    with _open(ctx) as arc:
        release = arc.publish(folder, name, version, metadata, jobs=ctx.obj["jobs"], progress=ctx.obj["progress"],
                              stats=stats, exclude=exclude)
    _report(_push_summary(release, stats))


def _push_summary(release, stats) -> str:
    """One line: what was published, and how much of it was new to the archive."""
    head = f"{release.name} {release.version}"
    if stats.unchanged:
        return f"{head} exists already with the same content: nothing changed (record {release.record_id.short})"
    stored_files, stored_bytes = stats.files - stats.uploaded_files, stats.bytes - stats.uploaded_bytes
    return (f"published {head}: {plural(len(release.files), 'file')}, {format_size(release.total_size)}"
            f" (record {release.record_id.short}); new: {plural(stats.uploaded_files, 'file')},"
            f" {format_size(stats.uploaded_bytes)}; already stored: {plural(stored_files, 'file')},"
            f" {format_size(stored_bytes)}")


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    return metadata


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@cli.command()
@click.argument("name", shell_complete=complete_names)
@click.argument("range", default="*", shell_complete=complete_versions)
@click.option("--to", "dest", type=click.Path(path_type=Path), help="Folder to write [default: a read-only folder in the cache].")
@click.option("--force", is_flag=True, help="Replace files in the folder whose content differs.")
@click.option("--exact", is_flag=True, help="Also remove the files an earlier pull placed that this release lacks"
              " (unchanged ones; edited ones too with --force; never files no pull placed).")
@click.option("--pre", is_flag=True, help="Let the range match prereleases.")
@click.option("--expect", metavar="RECORD_ID", help="Refuse the release unless its record id is this (sha256:...).")
@click.option("--link", type=click.Choice(["auto", "reflink", "hard", "symlink", "copy"]), default="auto",
              show_default=True, help="How files come from the cache: auto is reflink where the filesystem"
              " can, else copy (never shared with the cache); hard and symlink are instant but read-only.")
@click.option("--no-cache", is_flag=True, help="Write files straight from a remote archive, keeping no copy in"
              " the cache (needs --to; an archive on a local disk is never cached).")
@click.option("--cache-large", is_flag=True, help="Also keep files of 1 MiB and more in the cache (with --to they"
              " are written straight into the folder), for offline use or later pulls into other folders.")
@click.option("--json", "as_json", is_flag=True, help="Print what was pulled as JSON instead of the folder.")
@part_options
@click.pass_context
def pull(ctx: click.Context, name: str, range: str, dest: Path | None, force: bool, exact: bool, pre: bool,
         expect: str | None, link: str, no_cache: bool, cache_large: bool, as_json: bool, include: tuple[str, ...],
         exclude: tuple[str, ...], prefetch: bool) -> None:
    """Download the highest version of NAME matching RANGE; print the folder.

    A summary (the version the range chose, files written and already there) goes to stderr.
    """
    from .download import pull as pull_release

    if no_cache and dest is None:
        raise click.UsageError("--no-cache needs --to: a folder without --to lives in the cache")
    if no_cache and cache_large:
        raise click.UsageError("--no-cache and --cache-large contradict each other")
    if exact and dest is None:
        raise click.UsageError("--exact needs --to: a folder without --to always equals its release")
    with _open(ctx) as arc:
        release = pull_part(ctx, arc, arc.resolve(name, range, include_prerelease=pre, expect=expect), include,
                            exclude, prefetch, dest)
        if release is None:  # --prefetch: the cache is filled, no folder written
            return
        report = pull_release(arc, release, dest, force=force, link=link, jobs=ctx.obj["jobs"],
                              progress=ctx.obj["progress"], use_cache=not no_cache, exact=exact,
                              cache_large=cache_large)
        from .yank import state

        yank = state(arc, release.name, release.version)
    if as_json:
        _echo_json(jsonout.pull_json(release, report, yank))
    else:
        click.echo(printable(str(report.folder)))
    if yank is not None:
        _complain("warning", f"{release.name} {release.version} is yanked: {yank.reason} (by {yank.by}, {yank.at})")
    removed = f", {len(report.removed)} removed" if exact else ""
    _note(f"pulled {release.name} {release.version} (range {range}) into {report.folder}: "
          f"{report.files} files, {report.written} written, {report.already_there} already there{removed}")
    for path in report.removed:
        _note(f"  removed {path}")
    if report.kept_edited:
        _note(f"  kept {len(report.kept_edited)} edited file(s) of the earlier pull (--force removes"
              f" them): {', '.join(report.kept_edited[:5])}")


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON (exit status as without).")
def status(folder: Path, as_json: bool) -> None:
    """Tell whether FOLDER still matches the release pulled into it; exit 1 if not.

    Lists modified, missing and extra files (like `git status`; the exit status is that of
    `git diff --exit-code`). Unchanged files are known by their stat, not hashed again.
    """
    from .placed import status as folder_status

    report = folder_status(folder)
    pulled = report.pulled
    if as_json:
        _echo_json(jsonout.status_json(str(folder), report))
        sys.exit(0 if report.clean else 1)
    click.echo(f"{folder}: {pulled.name} {pulled.version} (record {pulled.record_id[:19]}) from {pulled.archive}")
    for label, paths in (("modified", report.modified), ("missing", report.missing), ("extra", report.extra)):
        for path in paths:
            click.echo(f"  {label + ':':<10}{path}")
    if report.clean:
        click.echo("clean: every file as pulled, nothing else")
        return
    click.echo(f"{len(report.modified)} modified, {len(report.missing)} missing, {len(report.extra)} extra")
    sys.exit(1)


@cli.command()
@click.argument("name", shell_complete=complete_names)
@click.argument("range", default="*", shell_complete=complete_versions)
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("--pre", is_flag=True, help="Let the range match prereleases.")
@click.pass_context
def show(ctx: click.Context, name: str, range: str, as_json: bool, pre: bool) -> None:
    """Show the record of the highest version of NAME matching RANGE, and its yank if yanked."""
    from .yank import state

    with _open(ctx) as arc:
        release = arc.resolve(name, range, include_prerelease=pre)
        yank = None if as_json else state(arc, release.name, release.version)
        shared = [] if as_json else shown_with_previous(arc, release)
    if as_json:  # in pieces: a record may list a million files
        for chunk in jsonout.record_json_chunks(release, ensure_ascii=not stdout_is_unicode()):
            click.echo(printable_json(chunk), nl=False)
        return click.echo()
    lines = [f"{release.name} {release.version}", f"  record   {release.record_id}", f"  created  {release.created}"]
    for key, value in sorted(release.metadata.items()):
        lines.append(f"  {key:<8} {value if isinstance(value, str) else json.dumps(value)}")
    if yank is not None:
        lines.append(f"  yanked   {yank.reason} (by {yank.by}, {yank.at})")
    lines.append(f"  files    {len(release.files)}, {format_size(release.total_size)}")
    lines += shared
    for path, entry in release.files.items():
        lines.append(f"    {format_size(entry.size):>10}  {entry.blob.short}  {path}")
    click.echo("\n".join(printable(line) for line in lines))


from .cli_upkeep import register  # noqa: E402  (verify, gc, mirror, import: archive/cli_upkeep.py)
register(cli)
from .cli_files import register  # noqa: E402  (cat, diff, stats: archive/cli_files.py)
register(cli)


def _report_phases() -> None:
    """One line on stderr with the time and throughput of each progress bar that was shown."""
    from .transfer import take_phases

    parts = []
    for phase in take_phases():
        moved = format_size(phase.bytes) if phase.bytes else f"{phase.files} files"
        rate = f" ({format_size(phase.bytes / phase.seconds)}/s)" if phase.bytes and phase.seconds > 0 else ""
        seconds = f"{phase.seconds:.{1 if phase.seconds >= 1 else 2}f} s"
        parts.append(f"{_DONE.get(phase.label, phase.label)} {moved} in {seconds}{rate}")
    if parts:
        click.echo("; ".join(parts), err=True)


def _clear_progress() -> None:
    """Erase progress bars left on the terminal, so a message starts on a clean line."""
    if "archive.transfer" in sys.modules:
        sys.modules["archive.transfer"].close_bars()


def _command_path(exc: click.UsageError, argv: list[str]) -> str:
    """``archive push`` for a usage error of push, also when click's parser gave no context
    (an option missing its value)."""
    if exc.ctx is not None:
        return exc.ctx.command_path
    name = next((arg for arg in argv if arg in cli.commands), None)
    return f"archive {name}" if name else "archive"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with its status; errors become one line on stderr."""
    protect_streams()
    _interrupts.install()
    try:
        sys.exit(_run(argv))
    except BrokenPipeError:
        if not stdout_closed():
            raise
        silence_stdout()  # the reader went away: not an error (see the module docstring)
        sys.exit(0)


def _run(argv: list[str] | None) -> int:
    """Run one command; return its exit status.

    The command is invoked here rather than through ``cli.main``, whose handlers would get in
    the way: it prints an empty line on Ctrl-C and turns EPIPE into exit status 1.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get(COMPLETE_VAR):  # the shell asks for completions (click's protocol)
        from .completion import shell_complete

        return shell_complete(cli, os.environ[COMPLETE_VAR])
    try:
        with cli.make_context("archive", args) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:  # --help, --version, or ctx.exit(status) in a command
        _report_phases()
        return exc.exit_code
    except click.UsageError as exc:
        click.echo(f"archive: error: {printable(exc.format_message())}\nTry '{_command_path(exc, args)} --help'.",
                   err=True)
        return 2
    except (KeyboardInterrupt, click.exceptions.Abort):
        _clear_progress()
        click.echo(f"{_ERASE_LINE if sys.stderr.isatty() else ''}archive: interrupted", err=True)
        return _interrupts.exit_status
    except EOFError:  # a prompt found stdin closed
        click.echo("archive: error: input ended before an answer was given", err=True)
        return 1
    except ArchiveError as exc:
        _clear_progress()
        if _verbosity["level"] > 0:
            click.echo("\n".join(map(printable, traceback.format_exc().splitlines())), err=True)
        click.echo(f"archive: error: {printable(exc)}", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"archive: error: {printable(exc.format_message())}", err=True)
        return exc.exit_code
    _report_phases()
    return 0


from .cli_pins import register  # noqa: E402  (the commands of pinning, yanking and named archives)

register(cli)
