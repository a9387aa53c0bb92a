"""--help, tracecap(8) and the bash completion are rendered from one table (cli.COMMANDS and
options.OPTIONS): every fact of the table reaches each of them, and what the completion offers
is what the parser accepts.

The completion is run in a real bash: functions called as `complete -F` calls them, and once
through readline itself (a pty), where bash splits words at ':' and '='.
"""

from __future__ import annotations

import dataclasses
import os
import pty
import re
import select
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from tracecap import __version__, cli, options, usage
from tracecap.cli import main

ROOT = Path(__file__).resolve().parents[3]
MACROS = {".TH", ".SH", ".SS", ".TP", ".PP", ".SY", ".YS", ".nh", ".ad", ".nr"}


@pytest.fixture(autouse=True)
def tripwires(monkeypatch: pytest.MonkeyPatch) -> dict[str, usage.Command]:
    """Every command's function fails the test if reached: help must never start anything.
    Returns the table as it was."""

    def must_not_run(found: dict[str, list[str]], rest: list[str]) -> int:
        raise AssertionError(f"a command ran with {found!r} {rest!r}")

    real = dict(cli.COMMANDS)
    for name, command in real.items():
        monkeypatch.setitem(cli.COMMANDS, name, dataclasses.replace(command, handler=must_not_run))
    return real


def squash(text: str) -> str:
    return " ".join(text.split())


def roff_text(roff: str) -> str:
    """The words a roff page prints, for comparison: macro lines keep their arguments, escapes
    become the characters they stand for."""
    words = []
    for line in roff.splitlines():
        if line.startswith("."):
            name, _, args = line.partition(" ")
            assert name in MACROS, line
            if name in (".TH", ".nr", ".ad"):
                continue
            line = args.strip('"')
        for escape, char in (
            (r"\fB", ""), (r"\fI", ""), (r"\fR", ""), (r"\-", "-"), (r"\&", ""), ("\\ ", " "),
            (r"\e", "\\"),
        ):  # fmt: skip
            line = line.replace(escape, char)
        words.append(line)
    return squash(" ".join(words))


def facts(command: usage.Command) -> list[str]:
    """What the help of ``command`` must say, each as one whitespace-squashed string."""
    flags = [*((command.operand,) if command.operand else ()), *usage.flags_of(command, cli.SHARED)]
    out = [command.description, usage.synopsis(command, cli.SHARED)]
    out += [text for flag in flags for text in (flag.term(), flag.full_help())]
    if command.options:
        out += [text for _, rows in cli.SHARED.forms for row in rows for text in row]
    return [squash(text) for text in out]


# --- --help, help COMMAND, --version ---


@pytest.mark.parametrize("command", cli.COMMANDS)
@pytest.mark.parametrize("how", [["--help"], ["-h"], ["--run-dir", "/r", "--help"]])
def test_help_on_every_command_exits_0_on_stdout(capsys, command: str, how: list[str]):
    """--help anywhere among the arguments: help, and nothing parsed or started."""
    assert main([command, *how]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == cli.command_help(command)
    assert out.startswith(f"usage: tracecap {command}")


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_help_command_prints_the_same(capsys, command: str):
    assert main(["help", command]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (cli.command_help(command), "")


def test_help_lines_fit_80_columns():
    for text in (cli.USAGE, *(cli.command_help(c) for c in cli.COMMANDS)):
        for line in text.splitlines():
            # only a single word longer than the room (none today) may pass the width
            assert len(line) <= usage.WIDTH or " " not in line.strip(), line


def test_version_is_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr() == (f"tracecap {__version__}\n", "")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tracecap.__version__"}


def test_every_command_has_a_handler_and_a_summary(tripwires: dict[str, usage.Command]):
    for name, command in tripwires.items():
        assert command.name == name
        assert command.handler is not None and command.handler.__name__ == f"_{name}", name
        assert command.summary and command.description, name
        assert f"  {name} " in cli.USAGE


# --- one table: the options parser and the usage agree ---


def test_every_option_of_the_parser_is_described_once():
    described = [name for flag in options.OPTIONS for name in flag.names]
    assert sorted(described) == sorted(options._ARG_DESTS)
    for flag in options.OPTIONS:
        assert len({options._ARG_DESTS[name] for name in flag.names}) == 1, flag.names


def test_own_flags_drive_the_parser():
    """A flag in a command's table is split off as its own (and given twice, refused)."""
    for command in cli.COMMANDS.values():
        for flag in command.flags:
            found, rest = cli.split_own([flag.names[0], "v"], command.own_flags())
            assert (found, rest) == ({flag.names[0]: ["v"]}, [])


def test_help_and_man_page_say_the_same():
    man = roff_text(cli.man_page())
    for name, command in cli.COMMANDS.items():
        text = squash(cli.command_help(name))
        for fact in facts(command):
            assert fact in text, (name, fact)
            assert fact in man, (name, fact)
    for paragraph in cli.PAGE.description:
        assert squash(paragraph) in man
    for _, entries in cli.PAGE.sections:
        for term, text in entries:
            assert squash(f"{term} {text}") in man


def test_man_page_is_plain_roff():
    page = cli.man_page()
    assert page.startswith(f'.TH TRACECAP 8 "" "tracecap {__version__}"')
    for line in page.splitlines():
        if line.startswith("."):
            assert line.split(" ")[0] in MACROS, line
        else:
            assert not re.search(r"(?<!\\)-", line), f"unescaped hyphen: {line}"
            assert not line.startswith("'"), line
    assert "\\fB" in page and "\\fI" in page


def test_roff_escape():
    assert usage.roff_escape(r"a-b \x .c") == r"a\-b \ex .c"
    assert usage.roff_escape(".x\n'y") == "\\&.x\n\\&'y"


# --- completion offers what the parser accepts ---

#: A value for each word that waits for more (ends in '=' or ':'), completing it into a token.
VALUES = {
    "write=": "/tmp/*", "write:path=": "/tmp/*", "read=": "/tmp/*", "read:path=": "/tmp/*",
    "net=": "lo", "dir:": "/var/lib/x", "limit:": "2gb", "floor:": "1gb",
    "comm=": "bash", "comm!=": "bash", "pid=": "1", "uid=": "0", "container=": "0" * 12,
    "event=": "vfs_write", "pcap-rotate:": "10mb,3", "index-rotate:": "1mb,2,compress",
    "json:": "/var/log/tracecap/events.json", "option:rotate-size=": "1mb",
    "option:rotate-count=": "5",
}  # fmt: skip


def capture_flag(dest: str) -> usage.Flag:
    return next(f for f in options.OPTIONS if options._ARG_DESTS[f.names[0]] == dest)


@pytest.mark.parametrize("dest", ["capture", "scope", "trace", "events", "output"])
def test_every_completed_word_is_accepted(dest: str):
    flag = capture_flag(dest)
    assert flag.words
    for word in flag.words:
        token = word + VALUES[word] if word.endswith(("=", ":")) else word
        # packet settings need packet capture on, as the error says
        extra = ["--capture", "network"] if token.startswith("pcap-") else []
        # rotation words rotate the events file, which needs a name and a size
        if token.startswith("option:rotate-"):
            extra = ["--output", "json:/var/log/e.json", "--output", "option:rotate-size=1mb"]
        options.parse_args([*extra, flag.names[0], token])


def test_every_capture_kind_and_setting_is_offered():
    words = capture_flag("capture").words
    bases = {re.split(r"[=:]", word)[0] for word in words}
    for form, _ in options.CAPTURE_HELP:
        for alternative in form.split(", "):
            base = re.split(r"[=:.]", alternative)[0]
            assert base in bases or base == "artifact", form
    assert set(options.KINDS) <= set(words)


# --- the bash completion script ---


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "tracecap"
    path.write_text(cli.bash_completion())
    return path


def test_completion_script_is_valid_bash(script: Path):
    subprocess.run(["bash", "-n", str(script)], check=True)


COMPLETE = r"""
source "$1"
complete -p tracecap
shift
for line in "$@"; do
    COMP_LINE=$line COMP_POINT=${#line}
    cur=${line##*[[:space:]=:]}  # what readline hands over: after the last break of ' =:'
    COMPREPLY=()
    _tracecap tracecap "$cur" ""
    printf '%s\n' "${COMPREPLY[*]}"
done
"""


def complete(script: Path, *lines: str) -> list[str]:
    done = subprocess.run(
        ["bash", "-c", COMPLETE, "bash", str(script), *lines],
        check=True,
        capture_output=True,
        text=True,
    )
    assert done.stderr == ""
    registered, *replies = done.stdout.splitlines()
    assert registered == "complete -F _tracecap tracecap"
    return replies


def test_completion_of_commands_flags_and_values(script: Path, tmp_path: Path):
    (tmp_path / "sub").mkdir()
    cases = {
        "tracecap ": " ".join([*cli.COMMANDS, "help", "--help", "-h", "--version"]),
        "tracecap st": "status",
        "tracecap help wr": "writer",
        "tracecap run --ring": "--ring-mb",
        "tracecap status -": "--run-dir --nats --creds --nkey --tlscert --tlskey --tlsca --stream "
        "--help -h",
        "tracecap writer ": " ".join((*cli.kinds.BY_NAME, cli.SHIP)),
        "tracecap writer file --conn": "--connect",
        "tracecap run --capture exe": "exec",
        "tracecap run -c write:ty": "type=regular type=pipe type=socket type=elf",
        "tracecap run --capture write:fd=stdo": "stdout",
        "tracecap run --capture=pcap-sn": " ".join(
            f"pcap-snaplen:{name}" for name in options.SNAPLEN_NAMES
        ),
        "tracecap collector --capture pcap:co": "container command",
        "tracecap run --capture net=l": "lo",
        f"tracecap run --capture dir:{tmp_path}/s": f"{tmp_path}/sub/",
        f"tracecap keys {tmp_path}/s": f"{tmp_path}/sub/",
        "tracecap run --scope comm": "comm= comm!=",
        "tracecap run --events vfs_write,net_packet_d": "vfs_write,net_packet_dns",
        "tracecap tap --topic file.": "file.write. file.read.",
        "tracecap run --output js": "json json:",
    }
    assert dict(zip(cases, complete(script, *cases), strict=True)) == cases


def readline_completes(script: Path, typed: str) -> list[str]:
    """Type ``typed`` and a TAB into an interactive bash, press Enter, and return the arguments
    the completed line passes (a shell function named tracecap prints them)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive bash on the pty
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "dumb", "PS1": "$ "}
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
    out = b""
    try:
        # 'A''RG': the echo of this line must not look like the function's output
        os.write(fd, f"source {script}; tracecap() {{ printf 'A''RG<%s>\\n' \"$@\"; }}\n".encode())
        os.write(fd, typed.encode() + b"\t\n")
        deadline = time.monotonic() + 10
        while b"ARG<" not in out or not out.rstrip().endswith(b"$"):
            if time.monotonic() > deadline:
                raise AssertionError(f"bash did not answer: {out!r}")
            if select.select([fd], [], [], 0.1)[0]:
                out += os.read(fd, 4096)
        os.write(fd, b"exit\n")
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    return re.findall(r"ARG<([^>]*)>", out.decode(errors="replace"))


@pytest.mark.parametrize(
    ("typed", "args"),
    [
        ("tracecap wri", ["writer"]),
        ("tracecap run --capture write:fd=stdo", ["run", "--capture", "write:fd=stdout"]),
        ("tracecap run --capture=pcap-sn", ["run", "--capture=pcap-snaplen:"]),
        ("tracecap run -c pcap:proc", ["run", "-c", "pcap:process"]),
    ],
)
def test_readline_completes_through_word_breaks(script: Path, typed: str, args: list[str]):
    assert readline_completes(script, typed) == args


def test_completion_words_cannot_break_the_script():
    with pytest.raises(ValueError, match="cannot be completed safely"):
        usage._bash_words(["it's"])
