"""Shell completion (bash, zsh, fish) through click's own mechanism.

``eval "$(_ARCHIVE_COMPLETE=bash_source archive)"`` (``zsh_source``, ``fish_source``) installs
it. Completing asks the archive only for what is cheap: the names of releases (one listing or
the names index) and the versions of one name; named archives come from the config. Any failure
(an archive out of reach, no config) completes nothing rather than print an error into the
user's command line.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

import click
from click.shell_completion import CompletionItem

from .errors import ArchiveError

if TYPE_CHECKING:
    from .interface import ArchiveInterface

logger = logging.getLogger(__name__)
COMPLETE_VAR = "_ARCHIVE_COMPLETE"


def _location(ctx: click.Context) -> str | None:
    return ctx.find_root().params.get("location") or ctx.params.get("location") or os.environ.get("ARCHIVE_URL")


def _candidates(ctx: click.Context, incomplete: str, ask: Callable[["ArchiveInterface"], list[str]]) -> list[CompletionItem]:
    """What ``ask`` reads from the archive the command line names, those starting with
    ``incomplete``; nothing if the archive cannot answer (never an error in the command line)."""
    from .locations import get_interface

    try:
        with get_interface(_location(ctx)) as arc:
            found = ask(arc)
    except ArchiveError as exc:
        logger.debug("no completion: %s", exc)
        return []
    return [CompletionItem(item) for item in found if item.startswith(incomplete)]


def complete_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Release names of the archive the command line names, starting with ``incomplete``."""
    return _candidates(ctx, incomplete, lambda arc: arc.names(incomplete.rpartition("/")[0] or None))


def complete_versions(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Versions of the NAME given before, starting with ``incomplete``, newest first."""
    name = ctx.params.get("name")
    if not name:
        return []
    return _candidates(ctx, incomplete, lambda arc: arc.versions(name))


def complete_remotes(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Names of the configured archives (and, for a path, click's own path completion)."""
    from .config import load_config

    try:
        remotes = load_config().remotes
    except ArchiveError:
        remotes = {}
    found = [CompletionItem(n, help=u) for n, u in sorted(remotes.items()) if n.startswith(incomplete)]
    return found or [CompletionItem(incomplete, type="file")]


def shell_complete(cli: click.Command, instruction: str) -> int:
    """Answer one completion request of the shell (or print the script); return the exit status."""
    from click.shell_completion import shell_complete as click_complete

    return click_complete(cli, {}, "archive", COMPLETE_VAR, instruction)
