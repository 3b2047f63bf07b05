"""The commands of pinning and housekeeping: ``lock``, ``sync``, ``yank``, ``unyank``, ``remote``.

Registered on the main group by :func:`register` (one line at the end of :mod:`archive.cli`),
which also accepts the global options after a subcommand (``archive ls -a lab``). Like
:mod:`archive.cli`, this module owns the terminal for its commands; the work is done by
:mod:`archive.lock`, :mod:`archive.yank` and :mod:`archive.config`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import cli as main_cli
from .terminal import printable, printable_json, stdout_is_unicode


def echo_json(value: object) -> None:
    """Print ``value`` as indented JSON on stdout (the ``--json`` output of a command)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=not stdout_is_unicode())
    click.echo(printable_json(text))


@click.command()
@click.argument("specs", metavar="NAME[@RANGE]...", nargs=-1, required=True)
@click.option("--file", "-f", "lock_file", type=click.Path(path_type=Path), default=Path("archive.lock"),
              show_default=True, help="The lock file to write.")
@click.option("--pre", is_flag=True, help="Let the ranges match prereleases.")
@click.option("--json", "as_json", is_flag=True, help="Print the pins as JSON.")
@click.pass_context
def lock(ctx: click.Context, specs: tuple[str, ...], lock_file: Path, pre: bool, as_json: bool) -> None:
    """Pin NAME (the highest version matching RANGE, default any) by record id in archive.lock."""
    from .lock import make_lock, write_lock

    with main_cli._open(ctx) as arc:
        pins = make_lock(arc, specs, include_prerelease=pre)
    write_lock(pins, lock_file)
    if as_json:
        echo_json({"lock_file": str(lock_file), "releases": [entry.to_json() for entry in pins.entries]})
        return
    for entry in pins.entries:
        main_cli._report(f"locked {entry.name} {entry.version} (range {entry.range}, record {entry.record.short})")
    main_cli._report(f"wrote {lock_file}")


@click.command()
@click.argument("lock_file", type=click.Path(path_type=Path), default=Path("archive.lock"), required=False)
@click.option("--to", "dest", type=click.Path(path_type=Path),
              help="Folder to write each release into, as DEST/NAME [default: read-only folders in the cache].")
@click.option("--json", "as_json", is_flag=True, help="Print each name's folder as JSON.")
@click.pass_context
def sync(ctx: click.Context, lock_file: Path, dest: Path | None, as_json: bool) -> None:
    """Materialize exactly the releases LOCK_FILE pins; refuse any whose record id differs.

    Releases come from the archive given by --archive or $ARCHIVE_URL if any (a mirror, say),
    else from the archive each pin names. One line per release: NAME, a tab, its folder.
    """
    from .lock import load_lock, sync as sync_lock

    pins = load_lock(lock_file)
    location = ctx.obj["location"]
    if location is not None:
        with main_cli._open(ctx) as arc:
            folders = sync_lock(pins, arc, dest, jobs=ctx.obj["jobs"], progress=ctx.obj["progress"])
    else:
        folders = sync_lock(pins, None, dest, jobs=ctx.obj["jobs"], progress=ctx.obj["progress"])
    if as_json:
        echo_json({"releases": [{**entry.to_json(), "folder": str(folders[entry.name])} for entry in pins.entries]})
        return
    for entry in pins.entries:
        click.echo(f"{printable(entry.name)}\t{printable(str(folders[entry.name]))}")
    main_cli._note(f"synced {main_cli.plural(len(pins.entries), 'release')} from {lock_file}")


def _yank_command(action: str):
    @click.command(name=action)
    @click.argument("name")
    @click.argument("version")
    @click.option("--reason", "-r", required=True, help="Why (kept in the archive, shown to everyone).")
    @click.option("--by", default=None, help="Who [default: your user name].")
    @click.pass_context
    def command(ctx: click.Context, name: str, version: str, reason: str, by: str | None) -> None:
        from . import yank as yanking

        with main_cli._open(ctx) as arc:
            marker = getattr(yanking, action)(arc, name, version, reason, by or main_cli._user_name())
        main_cli._report(f"{action}ed {marker.name} {marker.version}: {marker.reason}")

    command.help = ("Yank NAME VERSION: ranges skip it from now on; an exact version and a lock still get it."
                    " The release is not altered; the yank is recorded (who, when, why)."
                    if action == "yank" else "Take back the yank of NAME VERSION; its history is kept.")
    return command


def register(cli: click.Group) -> None:
    """Add this module's commands to ``cli``."""
    for command in (lock, sync, _yank_command("yank"), _yank_command("unyank")):
        cli.add_command(command)
