"""Commands about the files of releases: ``cat``, ``diff``, ``stats``, and pull's part options.

Registered on the ``archive`` group by :func:`register`; they follow the rules of
:mod:`archive.cli` (data on stdout, notes on stderr, one-line errors). The logic lives in
:mod:`archive.single`, :mod:`archive.selection`, :mod:`archive.compare` and
:mod:`archive.stats`; this module only parses and prints.
"""

from __future__ import annotations

import json
import shutil
from typing import Any, Callable

import click

from .terminal import format_size, printable, printable_json, stdout_is_unicode


def _cli():
    from . import cli  # late: archive.cli imports this module

    return cli


def _print_json(obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=not stdout_is_unicode())
    click.echo(printable_json(text))


# ---------------------------------------------------------------- pull --include/--exclude/--prefetch
def part_options(command: Callable) -> Callable:
    """The options of ``pull`` that take part of a release, or only fill the cache."""
    for option in reversed([
        click.option("--include", "include", multiple=True, metavar="GLOB",
                     help="Only the paths matching GLOB, in gitignore syntax (repeatable); only their blobs"
                     " are fetched."),
        click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
                     help="Leave out the paths matching GLOB, in gitignore syntax (repeatable)."),
        click.option("--prefetch", is_flag=True,
                     help="Only fill the cache with the release's blobs (verified); write no folder."),
    ]):
        command = option(command)
    return command


def pull_part(ctx: click.Context, arc, release, include: tuple[str, ...], exclude: tuple[str, ...],
              prefetch: bool, dest):
    """The part of ``release`` a pull places; or, with ``prefetch``, fill the cache, say so, and
    return None (nothing more to do)."""
    from .selection import select_files
    from .single import prefetch as fill_cache

    if prefetch and dest is not None:
        raise click.UsageError("--prefetch writes no folder: leave out --to")
    if (include or exclude) and dest is None and not prefetch:
        raise click.UsageError("--include/--exclude need --to (a folder in the cache always holds the whole release)")
    if not prefetch:
        return select_files(release, include, exclude)
    part = fill_cache(arc, release, include=include, exclude=exclude, jobs=ctx.obj["jobs"],
                      progress=ctx.obj["progress"])
    _cli()._note(f"prefetched {release.name} {release.version} into the cache: {len(part.files)} files,"
                 f" {format_size(part.total_size)}")
    return None


# ---------------------------------------------------------------- cat
@click.command()
@click.argument("args", nargs=-1, required=True, metavar="NAME [RANGE] PATH")
@click.option("--pre", is_flag=True, help="Let the range match prereleases.")
@click.pass_context
def cat(ctx: click.Context, args: tuple[str, ...], pre: bool) -> None:
    """Write the file PATH of the highest version of NAME matching RANGE (default: any) to
    stdout, verified; only that file's content is fetched (then kept in the cache)."""
    if len(args) not in (2, 3):
        raise click.UsageError(f"expected NAME [RANGE] PATH, got {len(args)} argument(s)")
    name, range, path = (args[0], "*", args[1]) if len(args) == 2 else args
    with _cli()._open(ctx) as arc, arc.open(name, path, range, include_prerelease=pre) as stream:
        out = click.get_binary_stream("stdout")
        shutil.copyfileobj(stream, out, 1024 * 1024)
        out.flush()


# ---------------------------------------------------------------- diff
@click.command()
@click.argument("name")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON (schema: docs/json.md).")
@click.option("--pre", is_flag=True, help="Let the ranges match prereleases.")
@click.pass_context
def diff(ctx: click.Context, name: str, old: str, new: str, as_json: bool, pre: bool) -> None:
    """List the paths added, removed and changed from version OLD of NAME to version NEW (each
    a version or a range), with sizes; from the records only, no content is fetched."""
    from .compare import diff_releases

    with _cli()._open(ctx) as arc:
        result = diff_releases(arc.resolve(name, old, include_prerelease=pre),
                               arc.resolve(name, new, include_prerelease=pre))
    if as_json:
        _print_json(result.to_json())
        return
    click.echo("\n".join(printable(line) for line in diff_lines(result)))


def diff_lines(result) -> list[str]:
    """The human form of a :class:`~archive.compare.Diff`: a summary, then one line per path."""
    from .compare import shared_bytes

    head = (f"{result.new.name} {result.old.version} -> {result.new.version}: {len(result.added)} added,"
            f" {len(result.removed)} removed, {len(result.changed)} changed, {result.unchanged} unchanged;"
            f" {format_size(shared_bytes(result.old, result.new))} shared")
    lines = [head]
    lines += [f"  added    {format_size(c.new.size):>10}  {c.path}" for c in result.added]
    lines += [f"  removed  {format_size(c.old.size):>10}  {c.path}" for c in result.removed]
    for change in result.changed:
        sizes = f"{format_size(change.old.size)} -> {format_size(change.new.size)}"
        mode = "" if change.old.executable == change.new.executable else \
            f" (executable: {str(change.old.executable).lower()} -> {str(change.new.executable).lower()})"
        lines.append(f"  changed  {sizes:>10}  {change.path}{mode}")
    return lines


# ---------------------------------------------------------------- stats
@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON (schema: docs/json.md).")
@click.pass_context
def stats(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Releases, logical bytes (what pulling all would write), stored bytes (distinct contents)
    and dedup savings, per name and in total: for NAME, the names of a namespace (NAMESPACE/),
    or every name."""
    from .errors import ReleaseNotFoundError
    from .stats import archive_stats

    with _cli()._open(ctx) as arc:
        if name is None or name.endswith("/"):
            names = arc.names(name[:-1] if name else None)
        elif arc.versions(name):
            names = [name]
        else:
            from .namespaces import no_release_named

            raise no_release_named(arc, name)
        if name is not None and not names:
            raise ReleaseNotFoundError(f"no namespace {name[:-1]!r} in {arc.location}")
        result = archive_stats(arc, names, jobs=ctx.obj["jobs"])
    if as_json:
        _print_json(result.to_json())
        return
    click.echo("\n".join(printable(line) for line in stats_table(result)))


def stats_table(result) -> list[str]:
    """The human table of :class:`~archive.stats.ArchiveStats`, one row per name and a total."""
    rows = [(n.name, n) for n in result.names] + [("total", result.total)]
    width = max([len("name")] + [len(label) for label, _ in rows])
    header = f"{'name':<{width}}  {'releases':>8}  {'files':>8}  {'logical':>10}  {'stored':>10}  {'saved':>10}"
    lines = [header]
    for label, row in rows:
        saved = f"{format_size(row.dedup_savings)}"
        lines.append(f"{label:<{width}}  {row.releases:>8}  {row.files:>8}  {format_size(row.logical_bytes):>10}"
                     f"  {format_size(row.stored_bytes):>10}  {saved:>10}")
    return lines


def shown_with_previous(arc, release) -> list[str]:
    """The lines ``show`` adds about the previous version: what of it this release shares."""
    from .compare import previous_release, shared_bytes

    previous = previous_release(arc, release)
    if previous is None:
        return ["  previous none (the first version)"]
    return [f"  shared   {format_size(shared_bytes(previous, release))} with {previous.version}"
            f" (stored once for both)"]


def register(group: click.Group) -> None:
    """Add this module's commands to the ``archive`` group."""
    for command in (cat, diff, stats):
        group.add_command(command)
