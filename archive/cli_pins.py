"""The commands for scripts and pinning: ``ls``, ``lock``, ``sync``, ``yank``, ``unyank``, ``remote``.

Registered on the main group by :func:`register` (one line at the end of :mod:`archive.cli`),
which also accepts the global options after a subcommand (``archive ls -a lab``). Like
:mod:`archive.cli`, this module owns the terminal for its commands; the work is done by
:mod:`archive.lock`, :mod:`archive.yank` and :mod:`archive.config`.
"""

from __future__ import annotations

from pathlib import Path

import click

from . import cli as main_cli
from .completion import complete_names, complete_remotes
from .errors import ReleaseNotFoundError
from .terminal import printable


echo_json = main_cli._echo_json


@click.command(name="ls")
@click.argument("name", required=False, shell_complete=complete_names)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON (see docs/json.md).")
@click.pass_context
def list_command(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List release names, the names of one namespace (NAMESPACE/), or the versions of NAME,
    newest first, each with its date, message and yank."""
    namespace = name[:-1] if name is not None and name.endswith("/") else None
    with main_cli._open(ctx) as arc:
        if name is None or namespace is not None:
            lines = arc.names(namespace)
            details = None
        else:
            from .listing import version_details

            details = version_details(arc, name)
            lines = [d.version for d in details]
        if name is not None and not lines:  # as `show` and `pull` say it, rather than print nothing
            if namespace is None:
                from .namespaces import no_release_named

                raise no_release_named(arc, name)
            raise ReleaseNotFoundError(f"no namespace {namespace!r} in {arc.location}")
    if as_json:
        echo_json({"names": lines} if details is None else {"name": name, "versions": [d.to_json() for d in details]})
        return
    for line in lines if details is None else map(_version_line, details):
        click.echo(printable(line))


def _version_line(info) -> str:
    """``1.2.3  2026-01-02T03:04:05Z  message  [yanked: reason]``."""
    yank = f"  [yanked: {info.yank.reason}]" if info.yank else ""
    return f"{info.version:<12} {info.created}  {info.message or ''}{yank}".rstrip()


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


@click.group()
def remote() -> None:
    """Name archives (in a config file) to use them as --archive NAME or ARCHIVE_URL=NAME."""


@remote.command(name="add")
@click.argument("name")
@click.argument("location")
@click.option("--replace", is_flag=True, help="Change the location of a name that has one.")
@click.option("--default", "make_default", is_flag=True, help="Also make it the default archive.")
def remote_add(name: str, location: str, replace: bool, make_default: bool) -> None:
    """Name the archive at LOCATION (a folder path or URL) NAME."""
    from .config import add_remote, config_path, set_default

    if "://" not in location:
        location = str(Path(location).absolute())  # a relative folder would change with the current one
    add_remote(name, location, replace=replace)
    if make_default:
        set_default(name)
    main_cli._report(f"{name} is {location}{' (the default)' if make_default else ''}; saved in {config_path()}")


@remote.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the names as JSON.")
def remote_list(as_json: bool) -> None:
    """List the named archives; the default is marked with *."""
    from .config import load_config

    config = load_config()
    if as_json:
        echo_json({"default": config.default, "remotes": dict(sorted(config.remotes.items()))})
        return
    for name, location in sorted(config.remotes.items()):
        click.echo(f"{'*' if name == config.default else ' '} {printable(name)}\t{printable(location)}")


@remote.command(name="remove")
@click.argument("name", shell_complete=complete_remotes)
def remote_remove(name: str) -> None:
    """Forget the name NAME (the archive itself is not touched)."""
    from .config import remove_remote

    remove_remote(name)
    main_cli._report(f"removed the name {name}")


@remote.command(name="default")
@click.argument("name", required=False, shell_complete=complete_remotes)
@click.option("--unset", is_flag=True, help="Go back to $ARCHIVE_URL or the built-in default.")
def remote_default(name: str | None, unset: bool) -> None:
    """Make NAME the default archive (used without --archive and $ARCHIVE_URL); show it without NAME."""
    from .config import load_config, set_default

    if unset or name is not None:
        set_default(None if unset else name)
        main_cli._report("no default archive" if unset else f"{name} is the default archive")
        return
    config = load_config()
    if config.default is not None:
        click.echo(f"{printable(config.default)}\t{printable(config.remotes.get(config.default, ''))}")


# ------------------------------------------------------------------ global options after a subcommand
def _set_location(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None and ctx.obj is not None:
        ctx.obj["location"] = value


def _set_jobs(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None and ctx.obj is not None:
        ctx.obj["jobs"] = value


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: object) -> None:
    if not value or ctx.obj is None:
        return
    level = -1 if param.name == "quiet" else max(int(value), main_cli._verbosity["level"])
    main_cli._verbosity["level"] = level
    main_cli._configure_logging(level)
    if level < 0:
        ctx.obj["progress"] = False


def _global_options() -> list[click.Option]:
    """The main group's options, accepted after a subcommand too (``archive ls -a lab``)."""
    return [
        click.Option(["--archive", "-a", "g_location"], metavar="LOCATION", expose_value=False,
                     callback=_set_location, shell_complete=complete_remotes, help="The global option, accepted here too."),
        click.Option(["--jobs", "-j", "g_jobs"], type=click.IntRange(1, 256), expose_value=False, callback=_set_jobs,
                     help="The global option, accepted here too."),
        click.Option(["--verbose", "-v", "verbose"], count=True, expose_value=False, callback=_set_verbosity,
                     help="The global option, accepted here too."),
        click.Option(["--quiet", "-q", "quiet"], is_flag=True, expose_value=False, callback=_set_verbosity,
                     help="The global option, accepted here too."),
    ]


def add_global_options(command: click.Command) -> None:
    """Give ``command`` (and the subcommands of a group) the global options its own do not clash with."""
    taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for option in _global_options():
        if not taken & set(option.opts):
            command.params.append(option)
    for sub in getattr(command, "commands", {}).values():
        add_global_options(sub)


def register(cli: click.Group) -> None:
    """Add this module's commands to ``cli``, and the global options to every command."""
    for command in (list_command, lock, sync, _yank_command("yank"), _yank_command("unyank"), remote):
        cli.add_command(command)
    for command in cli.commands.values():
        add_global_options(command)
