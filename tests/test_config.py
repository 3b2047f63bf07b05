"""Named archives (archive remote ...), their precedence, global options after a subcommand,
and shell completion through click's protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import archive
from archive.config import load_config
from archive.errors import InvalidInputError, NotAnArchiveError
from tests.conftest import make_tree
from tests.test_cli import run


@pytest.fixture
def two_archives(tmp_path: Path) -> tuple[str, str]:
    stores = []
    for name in ("lab", "home"):
        location = str(tmp_path / name)
        with archive.get_interface(location, create=True) as arc:
            arc.publish(make_tree(tmp_path / f"src-{name}", {"a.txt": name.encode()}), f"from-{name}", "1.0.0")
        stores.append(location)
    return stores[0], stores[1]


def test_remote_add_list_default_remove(two_archives, tmp_path: Path) -> None:
    lab, home = two_archives
    assert run("remote", "add", "lab", lab).returncode == 0
    assert run("remote", "add", "home", home, "--default").returncode == 0
    assert run("remote", "list").stdout == f"* home\t{home}\n  lab\t{lab}\n"
    assert json.loads(run("remote", "list", "--json").stdout) == {"default": "home",
                                                                 "remotes": {"home": home, "lab": lab}}
    clash = run("remote", "add", "lab", home)
    assert clash.returncode == 1 and "--replace" in clash.stderr
    assert run("remote", "remove", "home").returncode == 0
    assert load_config().remotes == {"lab": lab} and load_config().default is None
    assert run("remote", "remove", "home").returncode == 1


def test_precedence_option_over_env_over_config_default(two_archives, monkeypatch) -> None:
    lab, home = two_archives
    run("remote", "add", "lab", lab)
    run("remote", "add", "home", home, "--default")
    assert run("ls").stdout.split() == ["from-home"]
    assert run("ls", env={"ARCHIVE_URL": "lab"}).stdout.split() == ["from-lab"]
    assert run("-a", "home", "ls", env={"ARCHIVE_URL": "lab"}).stdout.split() == ["from-home"]
    assert run("ls", "-a", "home", env={"ARCHIVE_URL": "lab"}).stdout.split() == ["from-home"]
    assert run("ls", "-a", lab).stdout.split() == ["from-lab"]
    with archive.get_interface("lab") as arc:
        assert arc.names() == ["from-lab"]
    monkeypatch.setenv("ARCHIVE_URL", "home")
    with archive.get_interface() as arc:
        assert arc.names() == ["from-home"]


def test_a_name_that_is_not_configured_is_a_folder_as_before(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotAnArchiveError):
        archive.get_interface("nothing")


def test_no_password_in_the_config() -> None:
    result = run("remote", "add", "lab", "sftp://ann:s3cret@lab.example.org/srv")
    assert result.returncode == 1 and "s3cret" not in result.stderr and "keyring" in result.stderr
    assert load_config().remotes == {}


def test_a_broken_config_is_one_line(tmp_path: Path, isolated_user_dirs: Path) -> None:
    config = isolated_user_dirs / "config" / "archive" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("default = [")
    result = run("ls")
    assert result.returncode == 1 and result.stderr.startswith("archive: error: the config") \
        and result.stderr.count("\n") == 1
    with pytest.raises(InvalidInputError):
        load_config()


def test_global_options_after_the_subcommand(two_archives) -> None:
    lab, _ = two_archives
    quiet = run("pull", "from-lab", "-a", lab, "-q", "-j", "2")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip()
    assert run("push", "-a", lab, "--help").returncode == 0


def test_completion_script_and_release_names(two_archives) -> None:
    lab, _ = two_archives
    for shell in ("bash", "zsh", "fish"):
        script = run(env={"_ARCHIVE_COMPLETE": f"{shell}_source"})
        assert script.returncode == 0 and "_ARCHIVE_COMPLETE" in script.stdout, shell
    names = run(env={"_ARCHIVE_COMPLETE": "bash_complete", "COMP_WORDS": f"archive -a {lab} pull from-",
                     "COMP_CWORD": "4"})
    assert names.stdout.split() == ["plain,from-lab"]
    versions = run(env={"_ARCHIVE_COMPLETE": "bash_complete", "COMP_WORDS": "archive show from-lab ",
                        "COMP_CWORD": "3", "ARCHIVE_URL": lab})
    assert versions.stdout.split() == ["plain,1.0.0"]
    run("remote", "add", "lab", lab)
    remotes = run(env={"_ARCHIVE_COMPLETE": "bash_complete", "COMP_WORDS": "archive ls -a l", "COMP_CWORD": "3"})
    assert remotes.stdout.split() == ["plain,lab"]
    unreachable = run(env={"_ARCHIVE_COMPLETE": "bash_complete", "COMP_WORDS": "archive -a /nowhere pull x",
                           "COMP_CWORD": "4"})
    assert unreachable.returncode == 0 and unreachable.stdout.strip() == "" and unreachable.stderr == ""
