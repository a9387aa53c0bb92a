"""What `make setup` installs for help, as users reach it: the installed `tracecap` answers
--version and --help on every command, `man` finds and renders tracecap(8) without a warning,
and bash-completion's own loader finds the completion script. The installed files are the ones
the tree renders (scripts/render_docs.py), so set-up installed this version of them."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tracecap import __version__, cli

MAN_PAGE = Path("/usr/local/share/man/man8/tracecap.8")
COMPLETION = Path("/usr/local/share/bash-completion/completions/tracecap")
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def installed_tracecap() -> str:
    exe = shutil.which("tracecap", path=ROOT_PATH)
    if exe is None:
        pytest.skip("tracecap is not installed: run `make setup`")
    return exe


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=env or {"PATH": ROOT_PATH}
    )


def squash(text: str) -> str:
    return " ".join(text.split())


def test_version_is_the_installed_package_version() -> None:
    done = run(installed_tracecap(), "--version")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"tracecap {importlib.metadata.version('tracecap')}\n"
    assert done.stdout == f"tracecap {__version__}\n"


@pytest.mark.parametrize("command", cli.COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_on_every_installed_command(command: str, flag: str) -> None:
    done = run(installed_tracecap(), command, flag)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == cli.command_help(command)


def test_help_without_a_command_and_with_none() -> None:
    exe = installed_tracecap()
    for argv in (["help"], ["--help"], ["-h"]):
        done = run(exe, *argv)
        assert (done.returncode, done.stdout, done.stderr) == (0, cli.USAGE, ""), argv
    done = run(exe)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", cli.USAGE)


def test_the_man_page_is_installed_found_and_renders_without_warnings() -> None:
    installed_tracecap()
    assert MAN_PAGE.read_text() == cli.man_page()
    assert shutil.which("man", path=ROOT_PATH), "man-db is not installed: run `make setup-test`"
    found = run("man", "-w", "8", "tracecap")
    assert found.returncode == 0, found.stderr
    assert os.path.realpath(found.stdout.strip()) == os.path.realpath(MAN_PAGE)
    env = {"PATH": ROOT_PATH, "MANWIDTH": "80", "LANG": "C.UTF-8"}
    rendered = run("man", "--warnings", "-l", str(MAN_PAGE), env=env)
    assert (rendered.returncode, rendered.stderr) == (0, "")
    text = squash(rendered.stdout)
    assert text.startswith("TRACECAP(8) System Administration TRACECAP(8) NAME tracecap - ")
    for command in cli.COMMANDS.values():
        assert squash(command.description) in text, command.name
    for flag in (f for c in cli.COMMANDS.values() for f in c.flags):
        assert squash(flag.full_help()) in text, flag.names


def test_bash_completion_loads_the_installed_script() -> None:
    installed_tracecap()
    assert COMPLETION.read_text() == cli.bash_completion()
    assert BASH_COMPLETION.exists(), "bash-completion is not installed: run `make setup-test`"
    script = (
        f"source {BASH_COMPLETION}; _completion_loader tracecap; complete -p tracecap; "
        "COMP_LINE='tracecap run --capture exe' COMP_POINT=26; _tracecap tracecap exe --capture; "
        'echo "${COMPREPLY[*]}"'
    )
    done = run("bash", "-c", script)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "complete -F _tracecap tracecap\nexec\n"
