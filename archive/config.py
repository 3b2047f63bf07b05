"""Named archives: short names for archive locations, and the default one, in a TOML file.

The file is ``config.toml`` in the user config dir (platformdirs; ``$ARCHIVE_CONFIG`` names
another file)::

    default = "lab"

    [remotes]
    lab = "sftp://lab.example.org/srv/archive"
    www = "https://data.example.org/archive"

A name works wherever a location does: ``--archive lab``, ``ARCHIVE_URL=lab``,
``get_interface("lab")``. The archive used is the first of: ``--archive``, ``$ARCHIVE_URL``,
the config's default, the built-in default (a folder in the user data dir). A configured
name is taken before a folder of the same name in the current folder; write ``./lab`` for that.
No password is kept here (the file is plain text): the keyring and ssh keys hold those.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import tomltext
from .errors import InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)
CONFIG_FILE = "config.toml"
_REMOTE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")


@dataclass(frozen=True)
class Config:
    """The named archives (name -> location) and the name of the default one, if any."""

    remotes: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def to_toml(self) -> str:
        head = "" if self.default is None else f"default = {tomltext.string(self.default)}\n\n"
        lines = "".join(f"{tomltext.key(n)} = {tomltext.string(u)}\n" for n, u in sorted(self.remotes.items()))
        return f"# Named archives of `archive remote`.\n{head}[remotes]\n{lines}"


def config_path() -> Path:
    """``$ARCHIVE_CONFIG``, else ``config.toml`` in the user config dir."""
    named = os.environ.get("ARCHIVE_CONFIG")
    if named:
        return Path(named)
    import platformdirs

    return Path(platformdirs.user_config_dir("archive", appauthor=False)) / CONFIG_FILE


def load_config(path: Path | None = None) -> Config:
    """The config (empty when there is no file).

    Raises
    ------
    InvalidInputError
        The file is not TOML, or its entries are not strings.
    """
    path = path or config_path()
    try:
        document = tomltext.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the config {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the config {path} is not valid TOML: {exc}") from None
    remotes, default = document.get("remotes", {}), document.get("default")
    if not (isinstance(remotes, dict) and all(isinstance(v, str) for v in remotes.values())
            and (default is None or isinstance(default, str))):
        raise InvalidInputError(f"the config {path}: [remotes] must map names to locations, default be a name")
    return Config(dict(remotes), default)


def save_config(config: Config, path: Path | None = None) -> Path:
    """Write ``config`` atomically; return its path."""
    from .materialize import write_file_atomically

    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, [config.to_toml().encode("utf-8")], 0o600)
    return path


def check_remote_name(name: str) -> str:
    """A remote name: lowercase letters, digits, ``. _ -``; never a path or a URL."""
    if not _REMOTE_NAME.fullmatch(name):
        raise InvalidInputError(f"invalid archive name {name!r}: use lowercase letters, digits, '.', '_', '-'")
    return name


def add_remote(name: str, location: str, *, replace: bool = False) -> Config:
    """Name ``location`` ``name``; refuse to replace another location unless ``replace``."""
    from .locations import password_of

    config = load_config()
    check_remote_name(name)
    if password_of(location):
        raise InvalidInputError("a password is not kept in the config (a plain text file): keep it in the keyring")
    if name in config.remotes and config.remotes[name] != location and not replace:
        raise InvalidInputError(f"archive {name!r} is {config.remotes[name]} already (--replace to change it)")
    config = Config({**config.remotes, name: location}, config.default)
    save_config(config)
    return config


def remove_remote(name: str) -> Config:
    """Forget the name ``name`` (and the default, if it was the default)."""
    config = load_config()
    if name not in config.remotes:
        raise NotFoundError(f"no archive named {name!r} in {config_path()}")
    config = Config({n: u for n, u in config.remotes.items() if n != name},
                    None if config.default == name else config.default)
    save_config(config)
    return config


def set_default(name: str | None) -> Config:
    """Make ``name`` the default archive (None: back to the built-in default)."""
    config = load_config()
    if name is not None and name not in config.remotes:
        raise NotFoundError(f"no archive named {name!r} in {config_path()} (add it with: archive remote add)")
    config = Config(config.remotes, name)
    save_config(config)
    return config


def named_location(location: str) -> str:
    """The location a configured name stands for, or ``location`` itself when it is not a name."""
    if not _REMOTE_NAME.fullmatch(location):
        return location  # a path or URL: no config read
    found = load_config().remotes.get(location)
    if found is not None:
        logger.debug("archive %r is %s", location, found)
    return location if found is None else found


def default_remote() -> str | None:
    """The location of the config's default archive, or None."""
    config = load_config()
    if config.default is None:
        return None
    if config.default not in config.remotes:
        raise InvalidInputError(f"the config {config_path()}: default {config.default!r} names no archive")
    return config.remotes[config.default]
