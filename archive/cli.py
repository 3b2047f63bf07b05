"""The ``archive`` command: publish and fetch releases from a shell.

This module owns the terminal: it parses arguments, configures logging, prints results to
stdout and errors to stderr as one line, ``archive: error: ...``, with exit status 1 (2 for
usage errors, 130 for Ctrl-C). A traceback is shown only with ``-v``; an exception that is
not an :class:`ArchiveError` is a bug and keeps its traceback.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
import traceback
from pathlib import Path

import click

from .errors import ArchiveError

logger = logging.getLogger(__name__)
_verbosity = {"level": 0}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--archive", "-a", "location", metavar="LOCATION", envvar="ARCHIVE_URL",
              help="Archive folder or URL [default: $ARCHIVE_URL, else a local archive in your data folder].")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), default=None, help="Parallel transfers.")
@click.option("--verbose", "-v", count=True, help="More output; -v also shows tracebacks.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors.")
@click.option("--progress/--no-progress", default=None, help="Progress bars [default: on a terminal].")
@click.version_option(package_name="archive", prog_name="archive")
@click.pass_context
def cli(ctx: click.Context, location: str | None, jobs: int | None, verbose: int, quiet: bool,
        progress: bool | None) -> None:
    """Publish folders as immutable, versioned releases and fetch them back by version range."""
    _verbosity["level"] = -1 if quiet else verbose
    _configure_logging(_verbosity["level"])
    ctx.obj = {"location": location, "jobs": jobs, "progress": False if quiet else progress}


def _configure_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("archive: %(message)s"))
    root = logging.getLogger("archive")
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if level < 0 else logging.WARNING if level == 0
                  else logging.INFO if level == 1 else logging.DEBUG)


def _open(ctx: click.Context):
    from .locations import get_interface

    return get_interface(ctx.obj["location"])


@cli.command()
@click.argument("location")
def init(location: str) -> None:
    """Create an empty archive at LOCATION (a folder path or URL)."""
    from .locations import get_interface

    with get_interface(location, create=True) as arc:
        click.echo(f"archive ready at {arc.location}")


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
    click.echo(_push_summary(release, stats))


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
@click.argument("name")
@click.argument("range", default="*")
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
@click.pass_context
def pull(ctx: click.Context, name: str, range: str, dest: Path | None, force: bool, exact: bool, pre: bool,
         expect: str | None, link: str, no_cache: bool) -> None:
    """Download the highest version of NAME matching RANGE; print the folder.

    A summary (the version the range chose, files written and already there) goes to stderr.
    """
    from .download import pull as pull_release

    if no_cache and dest is None:
        raise click.UsageError("--no-cache needs --to: a folder without --to lives in the cache")
    if exact and dest is None:
        raise click.UsageError("--exact needs --to: a folder without --to always equals its release")
    with _open(ctx) as arc:
        release = arc.resolve(name, range, include_prerelease=pre, expect=expect)
        report = pull_release(arc, release, dest, force=force, link=link, jobs=ctx.obj["jobs"],
                              progress=ctx.obj["progress"], use_cache=not no_cache, exact=exact)
    click.echo(str(report.folder))
    if _verbosity["level"] >= 0:
        removed = f", {len(report.removed)} removed" if exact else ""
        click.echo(f"pulled {release.name} {release.version} (range {range}) into {report.folder}: "
                   f"{report.files} files, {report.written} written, {report.already_there} already there"
                   f"{removed}", err=True)
        for path in report.removed:
            click.echo(f"  removed {path}", err=True)
        if report.kept_edited:
            click.echo(f"  kept {len(report.kept_edited)} edited file(s) of the earlier pull (--force removes"
                       f" them): {', '.join(report.kept_edited[:5])}", err=True)


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
def status(folder: Path) -> None:
    """Tell whether FOLDER still matches the release pulled into it; exit 1 if not.

    Lists modified, missing and extra files (like `git status`; the exit status is that of
    `git diff --exit-code`). Unchanged files are known by their stat, not hashed again.
    """
    from .placed import status as folder_status

    report = folder_status(folder)
    pulled = report.pulled
    click.echo(f"{folder}: {pulled.name} {pulled.version} (record {pulled.record_id[:19]}) from {pulled.archive}")
    for label, paths in (("modified", report.modified), ("missing", report.missing), ("extra", report.extra)):
        for path in paths:
            click.echo(f"  {label + ':':<10}{path}")
    if report.clean:
        click.echo("clean: every file as pulled, nothing else")
        return
    click.echo(f"{len(report.modified)} modified, {len(report.missing)} missing, {len(report.extra)} extra")
    sys.exit(1)


@cli.command(name="ls")
@click.argument("name", required=False)
@click.pass_context
def list_command(ctx: click.Context, name: str | None) -> None:
    """List release names, or the versions of NAME, newest first."""
    with _open(ctx) as arc:
        for line in (arc.versions(name) if name else arc.names()):
            click.echo(line)


@cli.command()
@click.argument("name")
@click.argument("range", default="*")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("--pre", is_flag=True, help="Let the range match prereleases.")
@click.pass_context
def show(ctx: click.Context, name: str, range: str, as_json: bool, pre: bool) -> None:
    """Show the record of the highest version of NAME matching RANGE."""
    with _open(ctx) as arc:
        release = arc.resolve(name, range, include_prerelease=pre)
    if as_json:
        click.echo(json.dumps(release.to_json(), indent=2, sort_keys=True, ensure_ascii=False))
        return
    click.echo(f"{release.name} {release.version}")
    click.echo(f"  record   {release.record_id}")
    click.echo(f"  created  {release.created}")
    for key, value in sorted(release.metadata.items()):
        click.echo(f"  {key:<8} {value if isinstance(value, str) else json.dumps(value)}")
    click.echo(f"  files    {len(release.files)}, {format_size(release.total_size)}")
    for path, entry in release.files.items():
        click.echo(f"    {format_size(entry.size):>10}  {entry.blob.short}  {path}")


@cli.command()
@click.argument("name", required=False)
@click.argument("range", required=False)
@click.option("--full", is_flag=True, help="Re-hash every blob, not only check its size.")
@click.option("--cache", "check_cache", is_flag=True, help="Verify the local cache instead (corrupt blobs are evicted).")
@click.option("--repair", is_flag=True, help="Rewrite stale index files.")
@click.pass_context
def verify(ctx: click.Context, name: str | None, range: str | None, full: bool, check_cache: bool, repair: bool) -> None:
    """Check that releases are sound: records valid, every blob present (and intact with --full)."""
    if check_cache:
        from .cache import default_cache
        from .verify import verify_cache

        report = verify_cache(default_cache(), jobs=ctx.obj["jobs"] or 4, progress=ctx.obj["progress"])
        what = f"{report.blobs} cached blobs ({format_size(report.bytes)})"
    else:
        with _open(ctx) as arc:
            report = arc.verify(name, range, full=full, repair=repair, jobs=ctx.obj["jobs"],
                                progress=ctx.obj["progress"])
        what = f"{report.releases} releases, {report.blobs} blobs ({format_size(report.bytes)})"
    for line in report.warnings:
        click.echo(f"warning: {line}")
    for line in report.errors:
        click.echo(f"error: {line}")
    click.echo(f"verified {what}{' re-hashed' if full or check_cache else ''}: "
               f"{len(report.errors)} problem(s)")
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be removed.")
@click.option("--grace", "grace_hours", type=click.FloatRange(min=0), default=24.0, show_default=True,
              help="Keep anything younger than this many hours (protects publishes in flight).")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, grace_hours: float) -> None:
    """Remove blobs no release references and stale temporary files."""
    with _open(ctx) as arc:
        report = arc.collect_garbage(grace_hours=grace_hours, dry_run=dry_run)
    for key in report.removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {key}")
    click.echo(f"{'would free' if dry_run else 'freed'} {format_size(report.bytes_freed)} in "
               f"{len(report.removed)} objects ({report.kept_young} unreferenced but younger than {grace_hours:g} h kept)")


def format_size(size: int) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with its status; errors become one line on stderr."""
    try:
        cli.main(args=argv, prog_name="archive", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "archive"
        click.echo(f"archive: error: {exc.format_message()}\nTry '{command} --help'.", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("archive: interrupted", err=True)
        sys.exit(130)
    except ArchiveError as exc:
        if _verbosity["level"] > 0:
            traceback.print_exc()
        click.echo(f"archive: error: {exc}", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"archive: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(0)
