"""The commands that check, clean and move archives: ``verify``, ``gc``, ``mirror``, ``import``.

Registered on the main group by :func:`register` (a line in :mod:`archive.cli`). Like
:mod:`archive.cli`, this module owns the terminal for its commands and reports through its
helpers (one line per problem on stderr, the summary on stdout); the work is done by
:mod:`archive.verify`, :mod:`archive.gc`, :mod:`archive.mirror` and :mod:`archive.importers.rmellipse`.
"""

from __future__ import annotations

import click

from . import cli as main_cli
from . import jsonout
from .completion import complete_names, complete_versions
from .terminal import FiniteFloat, format_size


@click.command()
@click.argument("name", required=False, shell_complete=complete_names)
@click.argument("range", required=False, shell_complete=complete_versions)
@click.option("--full", is_flag=True, help="Re-hash every blob, not only check its size.")
@click.option("--cache", "check_cache", is_flag=True, help="Verify the local cache instead (corrupt blobs are evicted).")
@click.option("--repair", is_flag=True, help="Rewrite stale index files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (problems in it, not on stderr).")
@click.pass_context
def verify(ctx: click.Context, name: str | None, range: str | None, full: bool, check_cache: bool, repair: bool,
           as_json: bool) -> None:
    """Check that releases are sound: records valid, every blob present (and intact with --full).

    Each problem is a line on stderr (``archive: error: ...``); the summary goes to stdout.
    The exit status is 1 when there is a problem.
    """
    if check_cache:
        from .cache import default_cache
        from .verify import verify_cache

        report = verify_cache(default_cache(), jobs=ctx.obj["jobs"] or 4, progress=ctx.obj["progress"])
        what = f"{report.blobs} cached blobs ({format_size(report.bytes)})"
    else:
        with main_cli._open(ctx) as arc:
            report = arc.verify(name, range, full=full, repair=repair, jobs=ctx.obj["jobs"],
                                progress=ctx.obj["progress"])
        what = f"{report.releases} releases, {report.blobs} blobs ({format_size(report.bytes)})"
    if as_json:
        main_cli._echo_json(jsonout.verify_json(report, check_cache, full or check_cache))
        ctx.exit(0 if report.ok else 1)
    for line in report.warnings:
        main_cli._complain("warning", line)
    for line in report.errors:
        main_cli._complain("error", line)
    main_cli._report(f"verified {what}{' re-hashed' if full or check_cache else ''}: {len(report.errors)} problem(s)")
    if not report.ok:
        ctx.exit(1)


@click.command()
@click.option("--dry-run", "-n", is_flag=True, help="Only show what would be removed.")
@click.option("--grace", "grace_hours", type=FiniteFloat(min=0, max=main_cli.MAX_GRACE_HOURS), default=24.0,
              show_default=True, help="Keep anything younger than this many hours (protects publishes in flight).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, grace_hours: float, as_json: bool) -> None:
    """Remove blobs no release references and stale temporary files."""
    with main_cli._open(ctx) as arc:
        report = arc.collect_garbage(grace_hours=grace_hours, dry_run=dry_run)
    if as_json:
        return main_cli._echo_json(jsonout.gc_json(report, dry_run, grace_hours))
    for key in report.removed:
        main_cli._report(f"{'would remove' if dry_run else 'removed'} {key}")
    for key in report.restored:
        main_cli._report(f"kept {key}: set aside by an interrupted gc or just now, but a release or a publish in flight"
                " references it")
    main_cli._report(f"{'would free' if dry_run else 'freed'} {format_size(report.bytes_freed)} in "
            f"{len(report.removed)} objects ({report.kept_young} unreferenced but younger than {grace_hours:g} h kept)")


@click.command()
@click.argument("source")
@click.argument("target")
@click.argument("name", required=False)
@click.argument("range", required=False)
@click.option("--create", is_flag=True, help="Create an empty archive at TARGET if there is none.")
@click.pass_context
def mirror(ctx: click.Context, source: str, target: str, name: str | None, range: str | None, create: bool) -> None:
    """Copy releases from SOURCE to TARGET (all, or NAME's matching RANGE): blobs verified first,
    then records and pointers; what TARGET holds already is skipped, so a rerun resumes."""
    from .locations import get_interface

    with get_interface(source) as src, get_interface(target, create=create) as dst:
        report = src.mirror_to(dst, name, range, jobs=ctx.obj["jobs"], progress=ctx.obj["progress"])
    main_cli._report(f"mirrored {main_cli.plural(len(report.copied), 'release')} to {dst.location}"
            f" ({len(report.present)} there already): {main_cli.plural(report.blobs_copied, 'blob')},"
            f" {format_size(report.bytes_copied)} copied; {report.blobs_present} present")


@click.command(name="import")
@click.argument("source")
@click.option("--from", "kind", type=click.Choice(["rmellipse"]), required=True, help="The tool that wrote SOURCE.")
@click.option("--dry-run", "-n", is_flag=True, help="Only list what would be imported.")
@click.pass_context
def import_command(ctx: click.Context, source: str, kind: str, dry_run: bool) -> None:
    """Import every release of the archive at SOURCE (a folder or sftp:// URL, only read): every
    blob is checked first, and nothing is imported if one is damaged; a rerun adds only what is new."""
    from . import import_rmellipse

    with main_cli._open(ctx) as arc:
        report = import_rmellipse(source, arc, dry_run=dry_run, jobs=ctx.obj["jobs"], progress=ctx.obj["progress"])
    for line in report.imported:
        main_cli._report(f"{'would import' if dry_run else 'imported'} {line}")
    if not report.imported:
        main_cli._report(f"nothing new to import: {main_cli.plural(len(report.present), 'release')} present already")
    elif not dry_run:
        main_cli._report(f"imported {main_cli.plural(len(report.imported), 'release')} ({len(report.present)} present already):"
                f" {main_cli.plural(report.blobs_read, 'blob')} checked, {main_cli.plural(report.blobs_stored, 'blob')},"
                f" {format_size(report.bytes_stored)} stored")


def register(cli: click.Group) -> None:
    """Add this module's commands to ``cli``."""
    for command in (verify, gc, mirror, import_command):
        cli.add_command(command)
