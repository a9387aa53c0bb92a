"""The usage tables' types, and everything rendered from them: ``--help``, tracecap(8), and the
bash completion script.

One source of truth: each subcommand is one ``Command`` in tracecap/cli.py, whose flags also
drive the parser of its own options (``cli.split_own``), and the capture options are
``options.OPTIONS`` with their forms (``options.CAPTURE_HELP``, ``options.SCOPE_HELP``). The
help text, the man page and the completion script are rendered here from those same values, so
they cannot disagree (tests/unit/tracecap/test_usage.py checks that every fact reaches each).

Pure: strings in, strings out. ``make setup`` writes the man page and the completion script
with scripts/render_docs.py.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: Width of ``--help`` text: a terminal's 80 columns.
WIDTH = 80
#: Column where descriptions start in ``--help``; a longer term gets a line of its own.
DESC_COLUMN = 26

#: How a value is completed in bash: from ``words``, or by one of these completers.
COMPLETERS = {
    "file": 'compgen -f -- "$1"',
    "dir": 'compgen -d -S / -- "$1"',
    "iface": 'compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$1"',
}


@dataclass(frozen=True)
class Flag:
    """An option (``--run-dir DIR``) or an operand (``KIND``: ``names`` empty).

    ``words`` are the values bash completes (with ``comma_list``, each item of a comma list);
    ``complete`` names a completer (COMPLETERS) for free-form values; ``after`` completes what
    follows a word that ends in ``=`` or ``:`` (``("dir:", "dir")``: a directory after ``dir:``).
    """

    names: tuple[str, ...]
    metavar: str
    help: str
    repeatable: bool = False
    required: bool = False
    words: tuple[str, ...] = ()
    complete: str = ""
    after: tuple[tuple[str, str], ...] = ()
    comma_list: bool = False

    def synopsis(self) -> str:
        """``[--run-dir DIR]``, ``[--wait-for TOPIC[=N]]...``, ``--listen URL``, ``KIND``."""
        text = " ".join(p for p in (self.names[0] if self.names else "", self.metavar) if p)
        if not self.required:
            text = f"[{text}]"
        return text + ("..." if self.repeatable else "")

    def term(self) -> str:
        """How ``--help`` and the man page name it: ``--capture OPT, -c OPT``."""
        if not self.names:
            return self.metavar
        return ", ".join(f"{name} {self.metavar}".strip() for name in self.names)

    def full_help(self) -> str:
        return self.help + (" Repeatable." if self.repeatable else "")


@dataclass(frozen=True)
class Command:
    """A subcommand: what it does, its operand and flags, and (in cli.py) the function that runs
    it. ``options``: it also takes the capture options (``options.OPTIONS``)."""

    name: str
    summary: str
    description: str
    flags: tuple[Flag, ...] = ()
    options: bool = False
    operand: Flag | None = None
    handler: Callable[[dict[str, list[str]], list[str]], int] | None = None

    def own_flags(self) -> dict[str, bool]:
        """The flags ``cli.split_own`` separates, each with whether it may repeat."""
        return {name: flag.repeatable for flag in self.flags for name in flag.names}

    def switches(self) -> frozenset[str]:
        """The flags that take no value (an empty ``metavar``)."""
        return frozenset(name for flag in self.flags if not flag.metavar for name in flag.names)


@dataclass(frozen=True)
class Shared:
    """What every command with ``options`` takes, and the tables that explain the values."""

    flags: tuple[Flag, ...]
    #: (heading, [(form, meaning)]) sections: the capture forms, the scope expressions.
    forms: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


@dataclass(frozen=True)
class Page:
    """What only the man page says: its one-line name, the description, and closing sections
    (FILES, EXIT STATUS, ...) as (title, [(term, text)]); a term of "" is a plain paragraph."""

    version: str
    name_line: str
    description: tuple[str, ...]
    sections: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


def flags_of(command: Command, shared: Shared) -> tuple[Flag, ...]:
    """Every flag a command takes, the capture options first (as its synopsis lists them)."""
    return (*(shared.flags if command.options else ()), *command.flags)


def synopsis_parts(command: Command, shared: Shared) -> list[str]:
    """``tracecap run``, then one part per operand and flag: lines break only between parts."""
    parts = [f"tracecap {command.name}"]
    if command.operand is not None:
        parts.append(command.operand.synopsis())
    return parts + [flag.synopsis() for flag in flags_of(command, shared)]


def synopsis(command: Command, shared: Shared) -> str:
    return " ".join(synopsis_parts(command, shared))


# --- --help ------------------------------------------------------------------------------------


def _wrap(text: str, indent: int, first: str = "") -> list[str]:
    """Fill ``text`` to WIDTH, every line indented by ``indent``; ``first`` starts line one."""
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=first or " " * indent,
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _rows(rows: Iterable[tuple[str, str]]) -> list[str]:
    """Two columns: the term, then its meaning from DESC_COLUMN (or on the next line)."""
    lines: list[str] = []
    for term, text in rows:
        head = f"  {term}"
        if len(head) < DESC_COLUMN - 1:
            lines += _wrap(text, DESC_COLUMN, head.ljust(DESC_COLUMN))
        else:
            lines.append(head)
            lines += _wrap(text, DESC_COLUMN)
    return lines


def _synopsis_lines(lead: str, parts: Sequence[str]) -> list[str]:
    """``usage: tracecap run [...]`` filled to WIDTH, continued under the first option, and
    broken only between parts (textwrap does not break at a no-break space)."""
    glued = [part.replace(" ", "\xa0") for part in parts]
    lines = textwrap.wrap(
        " ".join(glued),
        WIDTH,
        initial_indent=lead,
        subsequent_indent=" " * (len(lead) + len(parts[0]) + 1),
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [line.replace("\xa0", " ") for line in lines]


def command_help(command: Command, shared: Shared) -> str:
    """``tracecap COMMAND --help``."""
    lines = _synopsis_lines("usage: ", synopsis_parts(command, shared))
    lines += ["", *_wrap(command.description, 0), ""]
    flags = flags_of(command, shared)
    rows = [(f.term(), f.full_help()) for f in ((command.operand,) if command.operand else ())]
    rows += [(f.term(), f.full_help()) for f in flags]
    rows.append(("--help, -h", "Print this help and exit."))
    lines += ["options:", *_rows(rows)]
    if command.options:
        for heading, forms in shared.forms:
            lines += ["", f"{heading}:", *_rows(forms)]
    return "\n".join(lines) + "\n"


def overview(commands: Sequence[Command], shared: Shared, notes: Sequence[str]) -> str:
    """``tracecap --help``: every command's synopsis and summary."""
    lines: list[str] = []
    for i, command in enumerate(commands):
        lead = "usage: " if i == 0 else "       "
        lines += _synopsis_lines(lead, synopsis_parts(command, shared))
    lines += [
        "       tracecap help [COMMAND]    (or tracecap COMMAND --help)",
        "       tracecap --version",
        "",
        "commands:",
        *_rows((c.name, c.summary) for c in commands),
    ]
    for note in notes:
        lines += ["", *_wrap(note, 0)]
    return "\n".join(lines) + "\n"


# --- tracecap(8) -------------------------------------------------------------------------------

_FONT = {"B": r"\fB", "I": r"\fI", "R": r"\fR"}


def roff_escape(text: str) -> str:
    """Text as roff prints it literally: backslashes and hyphen-minus escaped (so that options
    copy and paste as typed), and no line starting with a control character."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    lines = text.split("\n")
    return "\n".join(r"\&" + line if line.startswith((".", "'")) else line for line in lines)


def _roff_term(flag_or_term: Flag | str) -> str:
    """A term in bold, its metavars in italics: ``\\fB\\-\\-run\\-dir\\fR \\fIDIR\\fR``."""
    if isinstance(flag_or_term, str):
        return _FONT["B"] + roff_escape(flag_or_term) + _FONT["R"]
    flag = flag_or_term
    meta = _FONT["I"] + roff_escape(flag.metavar) + _FONT["R"] if flag.metavar else ""
    if not flag.names:
        return meta
    return ", ".join(
        " ".join(p for p in (_FONT["B"] + roff_escape(name) + _FONT["R"], meta) if p)
        for name in flag.names
    )


def _tp(term: str, text: str) -> list[str]:
    return [".TP", term, roff_escape(text)]


def _roff_synopsis(command: Command, shared: Shared) -> list[str]:
    """``.SY`` gives the synopsis its hanging indent (groff's an-ext, which man-db loads)."""
    out = [".SY tracecap", _FONT["B"] + command.name + _FONT["R"]]
    parts = [command.operand] if command.operand else []
    for flag in [*parts, *flags_of(command, shared)]:
        inner = _roff_term(Flag(flag.names[:1], flag.metavar, "") if flag.names else flag)
        text = (inner if flag.required else f"[{inner}]") + ("...\\&" if flag.repeatable else "")
        out.append(text.replace(" ", "\\ "))  # an unbreakable space: a part never splits
    out.append(".YS")
    return out


def man_page(commands: Sequence[Command], shared: Shared, page: Page) -> str:
    """tracecap(8) in roff (man(7) macros). ``.nh``/``.ad l``: no hyphenation or justification,
    so that option names never break and the text reads as the ``--help`` text does."""
    lines = [
        f'.TH TRACECAP 8 "" "tracecap {page.version}" "System Administration"',
        ".nr HY 0",
        ".nh",
        ".ad l",
        ".SH NAME",
        roff_escape(page.name_line),
        ".SH SYNOPSIS",
    ]
    for command in commands:
        lines += _roff_synopsis(command, shared)
    lines += [
        ".SY tracecap",
        r"\fBhelp\fR [\fICOMMAND\fR]",
        ".YS",
        ".SY tracecap",
        r"\fB\-\-version\fR",
        ".YS",
        ".SH DESCRIPTION",
    ]
    for paragraph in page.description:
        lines += [".PP", roff_escape(paragraph)]
    lines.append(".SH COMMANDS")
    for command in commands:
        lines += [f".SS {command.name}", roff_escape(command.description)]
        if command.operand is not None:
            lines += _tp(_roff_term(command.operand), command.operand.full_help())
        for flag in command.flags:
            lines += _tp(_roff_term(flag), flag.full_help())
        if command.options:
            lines += [".PP", "And the capture options below."]
    lines.append(".SH CAPTURE OPTIONS")
    lines.append(roff_escape("Taken by " + ", ".join(c.name for c in commands if c.options) + "."))
    for flag in shared.flags:
        lines += _tp(_roff_term(flag), flag.full_help())
    for heading, forms in shared.forms:
        lines.append(f'.SS "{roff_escape(heading.capitalize())}"')
        for form, text in forms:
            lines += _tp(_roff_term(form), text)
    for title, entries in page.sections:
        lines.append(f".SH {title.upper()}")
        for term, text in entries:
            lines += _tp(_roff_term(term), text) if term else [".PP", roff_escape(text)]
    return "\n".join(lines) + "\n"


# --- bash completion ---------------------------------------------------------------------------

_SAFE_WORD = re.compile(r"[!-&(-~]+")


def _bash_words(words: Iterable[str]) -> str:
    """Words for a bash array, single-quoted: printable ASCII without spaces or quotes only, so
    that no word can end its quote and break the script."""
    out = []
    for word in words:
        if not _SAFE_WORD.fullmatch(word):
            raise ValueError(f"completion word {word!r} cannot be completed safely in bash")
        out.append(f"'{word}'")
    return " ".join(out)


def _bash_value(flag: Flag) -> list[str]:
    """The assignments that tell ``_tracecap`` how to complete ``flag``'s value."""
    out = [f"words=({_bash_words(flag.words)})"]
    if flag.complete:
        out.append(f"how={flag.complete}")
    if flag.after:
        pairs = [p for prefix, how in flag.after for p in (prefix, how)]
        out.append(f"after=({_bash_words(pairs)})")
    if flag.comma_list:
        out.append("list=1")
    return out


def bash_completion(commands: Sequence[Command], shared: Shared) -> str:
    """A bash completion script for ``tracecap``: subcommands, each command's flags, and their
    values (capture forms, scope expressions, event names, kinds, files, directories,
    interfaces). It reads the typed word from ``COMP_LINE``, because bash splits words at ``=``
    and ``:`` (``COMP_WORDBREAKS``), then hands back only the part readline replaces."""
    for how in {f.complete for c in commands for f in (*flags_of(c, shared), c.operand) if f}:
        if how and how not in COMPLETERS:
            raise ValueError(f"no completer {how!r} (known: {', '.join(COMPLETERS)})")
    names = [c.name for c in commands]
    # one case per flag, for every "COMMAND FLAG" that names it (the capture options are shared)
    patterns: dict[Flag, list[str]] = {}
    flag_cases: list[str] = []
    operand_cases: list[str] = []
    for command in commands:
        flags = flags_of(command, shared)
        all_names = [n for f in flags for n in f.names] + ["--help", "-h"]
        flag_cases.append(f"            {command.name}) words=({_bash_words(all_names)}) ;;")
        for flag in flags:
            if flag.metavar:
                patterns.setdefault(flag, []).extend(f'"{command.name} {n}"' for n in flag.names)
        if command.operand is not None:
            operand_cases.append(
                f"            {command.name}) {'; '.join(_bash_value(command.operand))} ;;"
            )
    value_cases = [
        f"        {'|'.join(pattern)})\n            {'; '.join(_bash_value(flag))} ;;"
        for flag, pattern in patterns.items()
    ]
    completers = [f"        {how}) {body} ;;" for how, body in COMPLETERS.items()]
    return _BASH_TEMPLATE.format(
        top=_bash_words([*names, "help", "--help", "-h", "--version"]),
        commands=_bash_words(names),
        value_cases="\n".join(value_cases),
        flag_cases="\n".join(flag_cases),
        operand_cases="\n".join(operand_cases),
        completers="\n".join(completers),
    )


_BASH_TEMPLATE = """\
# bash completion for tracecap(8). Generated by `make setup` from tracecap's usage tables
# (tracecap/cli.py, tracecap/options.py, rendered by tracecap/usage.py): edit those, not this.

# _tracecap_run VALUE HOW: what the completer HOW offers for VALUE.
_tracecap_run() {{
    case $2 in
{completers}
    esac
}}

# _tracecap_how COMMAND FLAG: sets words, how, after and list for the flag's value; fails for a
# flag that takes no value (or is not one).
_tracecap_how() {{
    case "$1 $2" in
{value_cases}
        *) return 1 ;;
    esac
}}

# _tracecap_reply WORD CUR CANDIDATE...: offer the candidates that extend WORD (the whole typed
# word), cut to CUR (the part after bash's last word break, which readline replaces).
_tracecap_reply() {{
    local word=$1 keep=$(( ${{#1}} - ${{#2}} )) c
    shift 2
    for c in "$@"; do
        [[ $c == "$word"* ]] && COMPREPLY+=("${{c:keep}}")
    done
    for c in "${{COMPREPLY[@]}}"; do
        if [[ $c == *[=:/] ]]; then
            compopt -o nospace 2>/dev/null
            break
        fi
    done
}}

# _tracecap_value PREFIX VALUE: candidates for a flag's VALUE (words, how, after, list set by
# _tracecap_how), each as PREFIX + value.
_tracecap_value() {{
    local prefix=$1 value=$2 head="" c i
    local -a out=()
    if [[ -n $list && $value == *,* ]]; then
        head=${{value%,*}},
        value=${{value##*,}}
    fi
    for (( i = 0; i < ${{#after[@]}}; i += 2 )); do
        if [[ $value == "${{after[i]}}"* ]]; then
            while IFS= read -r c; do
                [[ -n $c ]] && out+=("$prefix$head${{after[i]}}$c")
            done < <(_tracecap_run "${{value#"${{after[i]}}"}}" "${{after[i+1]}}")
        fi
    done
    for c in "${{words[@]}}"; do
        out+=("$prefix$head$c")
    done
    if [[ -n $how ]]; then
        while IFS= read -r c; do
            [[ -n $c ]] && out+=("$prefix$head$c")
        done < <(_tracecap_run "$value" "$how")
    fi
    printf '%s\\n' "${{out[@]}}"
}}

_tracecap() {{
    local line=${{COMP_LINE:0:COMP_POINT}} cur=$2 cmd flag value prefix how="" list="" c
    local -a w words=() after=() candidates=()
    read -ra w <<<"$line"
    [[ $line == *[[:space:]] || ${{#w[@]}} -eq 0 ]] && w+=("")
    local n=${{#w[@]}}
    local word=${{w[n-1]}}
    COMPREPLY=()
    if (( n <= 2 )); then
        _tracecap_reply "$word" "$cur" {top}
        return 0
    fi
    cmd=${{w[1]}}
    if [[ $cmd == help ]]; then
        (( n == 3 )) && _tracecap_reply "$word" "$cur" {commands}
        return 0
    fi
    if [[ $word == --*=* ]]; then
        flag=${{word%%=*}} value=${{word#*=}} prefix=$flag=
    else
        flag=${{w[n-2]}} value=$word prefix=""
    fi
    if _tracecap_how "$cmd" "$flag"; then
        :
    elif [[ $word == -* ]]; then
        case $cmd in
{flag_cases}
        esac
        _tracecap_reply "$word" "$cur" "${{words[@]}}"
        return 0
    elif (( n == 3 )); then
        prefix=""
        value=$word
        case $cmd in
{operand_cases}
            *) return 0 ;;
        esac
    else
        return 0
    fi
    while IFS= read -r c; do
        [[ -n $c ]] && candidates+=("$c")
    done < <(_tracecap_value "$prefix" "$value")
    _tracecap_reply "$word" "$cur" "${{candidates[@]}}"
    return 0
}}
complete -F _tracecap tracecap
"""
