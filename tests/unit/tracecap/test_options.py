"""Tests of the pure option parser: Tracee's parser tests re-expressed, plus the quirks we fix."""

import re
from itertools import permutations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracecap import options
from tracecap.options import (
    EVENT_NAMES,
    FileCapture,
    OptionError,
    PcapCapture,
    Scope,
    expand_config_file,
    parse_args,
    parse_capture,
    parse_scope,
)


def cap(*tokens: str):
    return parse_args([arg for token in tokens for arg in ("--capture", token)])


def raises(message: str):
    """Every error must name its token; match the literal text, not a regex."""
    return pytest.raises(OptionError, match=re.escape(message))


# --- cases from Tracee's capture_test.go and artifacts_test.go ---


def test_defaults():
    config = parse_args([])
    assert config.kinds() == ()
    assert config.topics() == ()
    assert config.dir == "/var/lib/tracecap"
    assert config.out_dir == "/var/lib/tracecap/out"
    assert not config.clear_dir
    assert config.limit_bytes is None
    assert config.floor_bytes == options.DEFAULT_FLOOR_BYTES == 64 << 20
    assert config.pcap == PcapCapture()
    assert config.scope == Scope()
    assert config.events == ()
    assert config.output == "none"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("foo", "invalid capture option specified: 'foo'"),
        ("dir:", "capture output dir cannot be empty: 'dir:'"),
        ("write=", "invalid capture option specified: 'write='"),
        ("write=/tmp", "file path filter should end with *: 'write=/tmp'"),
        ("write=*", "capture path filter cannot be empty: 'write=*'"),
        (
            "write:type=non-existing",
            "unsupported file type filter value for capture - non-existing",
        ),
        ("write:fd=non-existing", "unsupported file FD filter value for capture - non-existing"),
        ("executable", "invalid capture option specified: 'executable'"),
        ("write:invalid=1", "unrecognized file capture option: invalid (in 'write:invalid=1'"),
        ("write:path", "invalid capture option specified: 'write:path'"),
        ("writex", "invalid capture option specified: 'writex'"),
        ("read=", "invalid capture option specified: 'read='"),
        ("read:type=", "invalid capture option specified: 'read:type='"),
        ("read=/tmp", "file path filter should end with *: 'read=/tmp'"),
        ("read:path=*", "capture path filter cannot be empty: 'read:path=*'"),
    ],
)
def test_tracee_errors(token: str, message: str):
    with raises(message):
        cap(token)


def test_invalid_option_lists_accepted_forms():
    with raises("(accepted: write[=/p*|:path=/p*|:type=regular|pipe|socket|elf|"):
        cap("foo")
    with raises("dir:/path, clear-dir, limit:<N>mb|gb"):
        cap("foo")


def test_unknown_type_and_fd_list_accepted_values():
    with raises("(in 'read:type=fifo'; accepted: regular, pipe, socket, elf)"):
        cap("read:type=fifo")
    with raises("(in 'write:fd=3'; accepted: stdin, stdout, stderr)"):
        cap("write:fd=3")


@pytest.mark.parametrize("kind", ["exec", "mem", "module", "bpf"])
def test_single_flag(kind: str):
    config = cap(kind)
    assert getattr(config, kind) is True
    assert config.kinds() == (kind,)
    assert config.out_dir == "/var/lib/tracecap/out"


@pytest.mark.parametrize("kind", ["write", "read"])
def test_file_flag(kind: str):
    config = cap(kind)
    assert getattr(config, kind) == FileCapture(enabled=True)
    assert config.kinds() == (kind,)
    assert config.out_dir == "/var/lib/tracecap/out"


def test_network():
    config = cap("network")
    assert config.pcap == PcapCapture(enabled=True, split=frozenset({"single"}), snaplen=96)
    assert config.topics() == (b"net.packets.",)


def test_network_with_all_splits():
    config = cap("network", "pcap:process,command,container")
    assert config.pcap.split == {"process", "command", "container"}
    assert config.pcap.snaplen == 96


def test_network_with_two_splits():
    assert cap("network", "pcap:command,container").pcap.split == {"command", "container"}


def test_network_snaplen_bytes():
    config = cap("network", "pcap:command,container", "pcap-snaplen:120b")
    assert config.pcap.split == {"command", "container"}
    assert config.pcap.snaplen == 120


@pytest.mark.parametrize("token", ["write=/tmp*", "write:path=/tmp*"])
def test_write_path(token: str):
    assert cap(token).write == FileCapture(enabled=True, paths=(b"/tmp",))


@pytest.mark.parametrize("token", ["read=/tmp*", "read:path=/tmp*"])
def test_read_path(token: str):
    assert cap(token).read == FileCapture(enabled=True, paths=(b"/tmp",))


def test_read_type_pipe():
    assert cap("read:type=pipe").read == FileCapture(enabled=True, types=frozenset({"pipe"}))


def test_read_fd_stdin():
    assert cap("read:fd=stdin").read == FileCapture(enabled=True, fds=frozenset({0}))


def test_all_kinds():
    config = cap("write", "read", "exec", "mem", "module", "bpf", "network")
    assert config.kinds() == ("write", "read", "exec", "mem", "module", "bpf", "network")
    assert config.topics() == (
        b"file.write.",
        b"file.read.",
        b"exec.",
        b"mem.",
        b"module.",
        b"bpf.",
        b"net.packets.",
    )


def test_clear_dir_with_dir_either_order():
    for tokens in (("dir:/srv/cap", "clear-dir"), ("clear-dir", "dir:/srv/cap")):
        config = cap(*tokens)
        assert config.clear_dir
        assert config.dir == "/srv/cap"
        assert config.out_dir == "/srv/cap/out"


def test_pcap_options_filtered():
    config = cap("network", "pcap-options:filtered")
    assert config.pcap == PcapCapture(
        enabled=True, split=frozenset({"single"}), snaplen=96, filtered=True
    )
    assert cap("network", "pcap-options:NONE").pcap.filtered is False


@pytest.mark.parametrize(
    ("value", "snaplen"),
    [
        ("max", -1),
        ("headers", 0),
        ("default", 96),
        ("1kb", 1024),
        ("2k", 2048),
        ("1KB", 1024),
        ("262144b", 262144),
        ("256kb", 262144),
    ],
)
def test_snaplen(value: str, snaplen: int):
    assert cap("network", f"pcap-snaplen:{value}").pcap.snaplen == snaplen


@pytest.mark.parametrize("value", ["invalid", "", "12", "0b", "0kb", "-1b", "+5b", "1.5kb", "1mb"])
def test_snaplen_invalid(value: str):
    with raises(f"could not parse pcap snaplen: 'pcap-snaplen:{value}'"):
        cap("network", f"pcap-snaplen:{value}")


def test_snaplen_too_large_names_the_limit():
    with raises("'pcap-snaplen:262145b' is 262145 bytes (accepted: default, headers, max"):
        cap("network", "pcap-snaplen:262145b")
    with raises("at most 262144 bytes"):
        cap("network", "pcap-snaplen:257kb")


def test_invalid_split_and_options():
    with raises("unknown pcap split 'invalid' in 'pcap:invalid'"):
        cap("network", "pcap:invalid")
    with raises("unknown pcap option in 'pcap-options:invalid'"):
        cap("network", "pcap-options:invalid")


def test_dir_path():
    assert cap("dir:/custom/path").out_dir == "/custom/path/out"
    assert cap("dir:/custom/path/").dir == "/custom/path"
    assert cap("dir:/").out_dir == "/out"


@pytest.mark.parametrize("kind", ["write", "read"])
def test_at_most_three_path_filters(kind: str):
    ok = cap(*(f"{kind}=/d{i}*" for i in range(3)))
    assert getattr(ok, kind).paths == (b"/d0", b"/d1", b"/d2")
    with raises(f"too many file-{kind} path filters given: '{kind}=/d3*'"):
        cap(*(f"{kind}=/d{i}*" for i in range(4)))


@pytest.mark.parametrize("kind", ["write", "read"])
def test_path_filter_length_limit(kind: str):
    fifty = "/" + "a" * 49
    assert getattr(cap(f"{kind}={fifty}*"), kind).paths == (fifty.encode(),)
    with raises("the length of a path filter is limited to 50 characters: "):
        cap(f"{kind}={fifty}b*")


# --- the examples of Tracee's --capture help text ---


def test_help_exec():
    assert cap("exec").kinds() == ("exec",)


def test_help_exec_dir_clear():
    config = parse_args(["--capture", "exec", "--capture", "dir:/my/dir", "--capture", "clear-dir"])
    assert config.exec
    assert config.out_dir == "/my/dir/out"
    assert config.clear_dir


def test_help_write_paths():
    config = cap("write=/usr/bin/*", "write=/etc/*")
    assert config.write.paths == (b"/usr/bin/", b"/etc/")


def test_help_write_type_fd():
    config = cap("write:type=socket", "write:fd=stdout")
    assert config.write == FileCapture(
        enabled=True, types=frozenset({"socket"}), fds=frozenset({1})
    )


@pytest.mark.parametrize("token", ["net", "network", "pcap"])
def test_help_net(token: str):
    assert cap(token).pcap == PcapCapture(enabled=True, split=frozenset({"single"}))


def test_help_net_split():
    assert cap("net", "pcap:process,command").pcap.split == {"process", "command"}
    assert cap("network", "pcap:container,command").pcap.split == {"container", "command"}


def test_help_net_filtered():
    assert cap("net", "pcap-options:filtered").pcap.filtered


@pytest.mark.parametrize(
    ("value", "snaplen"), [("1kb", 1024), ("max", -1), ("headers", 0), ("default", 96)]
)
def test_help_net_snaplen(value: str, snaplen: int):
    assert cap("net", f"pcap-snaplen:{value}").pcap.snaplen == snaplen


# --- Tracee quirks we fix ---


@pytest.mark.parametrize(
    "tokens",
    [
        ("network", "pcap:process"),
        ("network", "pcap:process", "pcap-snaplen:1kb", "pcap-options:filtered", "dir:/x"),
        ("write=/a*", "write:type=pipe", "read:fd=stderr", "exec", "clear-dir", "limit:2gb"),
    ],
)
def test_order_never_changes_the_result(tokens: tuple[str, ...]):
    results = {cap(*order) for order in permutations(tokens)}
    assert len(results) == 1


def test_split_is_exactly_the_pcap_fields():
    assert cap("pcap:process", "network").pcap.split == {"process"}
    assert cap("pcap:process", "pcap:command").pcap.split == {"process", "command"}
    assert cap("pcap:single,process").pcap.split == {"single", "process"}


def test_pcap_split_alone_enables_network():
    assert cap("pcap:command").pcap == PcapCapture(enabled=True, split=frozenset({"command"}))


def test_unknown_split_among_valid_ones_is_an_error():
    with raises("unknown pcap split 'bogus' in 'pcap:process,bogus'"):
        cap("pcap:process,bogus")
    with raises("unknown pcap split '' in 'pcap:'"):
        cap("pcap:")


def test_read_filters_are_checked_like_write():
    with raises("too many file-read path filters given"):
        cap("read=/a*", "read=/b*", "read=/c*", "read=/d*")
    with raises("limited to 50 characters: 'read=/" + "x" * 50 + "*' has 51 bytes"):
        cap("read=/" + "x" * 50 + "*")


def test_repeated_path_filter_counts_once():
    assert cap("write=/a*", "write=/b*", "write=/c*", "write:path=/a*").write.paths == (
        b"/a",
        b"/b",
        b"/c",
    )


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("artifact:write=/x*", "write"),
        ("artifact:read", "read"),
        ("artifact:exec", "exec"),
        ("artifact:mem", "mem"),
        ("artifact:module", "module"),
        ("artifact:bpf", "bpf"),
        ("artifact:network", "network"),
        ("artifact:net", "network"),
        ("artifact:pcap", "network"),
        ("artifact:pcap:process", "network"),
        ("artifact:net=eth0", "network"),
    ],
)
def test_artifact_prefix_for_every_kind(token: str, expected: str):
    assert cap(token).kinds() == (expected,)


@pytest.mark.parametrize(
    "token", ["artifact:dir:/x", "artifact:clear-dir", "artifact:", "artifact:foo"]
)
def test_artifact_prefix_only_before_kinds(token: str):
    with raises(f"invalid capture option specified: {token!r} ('artifact:' may precede only"):
        cap(token)


@pytest.mark.parametrize("token", ["pcap-snaplen:max", "pcap-options:filtered"])
def test_pcap_settings_need_network(token: str):
    with raises(f"needs --capture network (or net, pcap, pcap:..., net=<iface>): {token!r}"):
        cap(token)


@pytest.mark.parametrize(
    "tokens",
    [
        ("dir:/a", "dir:/b"),
        ("limit:1gb", "limit:2gb"),
        ("floor:1gb", "floor:2gb"),
        ("net", "pcap-snaplen:max", "pcap-snaplen:headers"),
        ("net", "pcap-options:filtered", "pcap-options:none"),
        ("net=eth0", "net=eth1"),
    ],
)
def test_conflicting_single_settings(tokens: tuple[str, ...]):
    with raises(f"conflicting {tokens[-1].split(':')[0].split('=')[0]}"):
        cap(*tokens)


def test_same_single_setting_twice_is_fine():
    assert cap("dir:/a", "dir:/a/").dir == "/a"
    assert cap("limit:1024mb", "limit:1gb").limit_bytes == 1024**3


# --- options of our own ---


def test_net_iface():
    assert cap("net=eth0").pcap == PcapCapture(
        enabled=True, split=frozenset({"single"}), iface="eth0"
    )
    assert cap("net=br-1a2b.100", "pcap:process").pcap.split == {"process"}


@pytest.mark.parametrize("iface", ["", "a" * 16, "eth 0", "eth/0", "..", "é"])
def test_net_iface_invalid(iface: str):
    with raises(f"invalid network interface name: 'net={iface}'"):
        cap(f"net={iface}")


def test_dir_must_be_absolute():
    with raises("capture output dir must be an absolute path: 'dir:relative/x'"):
        cap("dir:relative/x")


@pytest.mark.parametrize(("value", "size"), [("1mb", 1 << 20), ("3gb", 3 << 30), ("5MB", 5 << 20)])
def test_limit(value: str, size: int):
    assert cap(f"limit:{value}").limit_bytes == size


@pytest.mark.parametrize("value", ["", "0mb", "10", "10kb", "-1mb", "1.5gb", "mb"])
def test_limit_invalid(value: str):
    with raises(f"could not parse capture limit: 'limit:{value}' (accepted: limit:<N>mb"):
        cap(f"limit:{value}")


@pytest.mark.parametrize(("value", "size"), [("1mb", 1 << 20), ("2gb", 2 << 30), ("9MB", 9 << 20)])
def test_floor(value: str, size: int):
    assert cap(f"floor:{value}").floor_bytes == size
    assert cap(f"floor:{value}", "limit:1gb").limit_bytes == 1 << 30


@pytest.mark.parametrize("value", ["", "0gb", "10", "10kb", "-1mb", "1.5gb", "5%"])
def test_floor_invalid(value: str):
    with raises(f"could not parse free-space floor: 'floor:{value}' (accepted: floor:<N>mb"):
        cap(f"floor:{value}")


def test_parse_capture_alone():
    capture = parse_capture(["exec", "dir:/d"])
    assert capture.exec
    assert capture.out_dir == "/d/out"


def test_non_utf8_path_from_argv():
    assert cap("write=/tmp/\udcff*").write.paths == (b"/tmp/\xff",)


def test_unencodable_path():
    with raises("cannot be encoded to bytes"):
        cap("write=/tmp/\ud800*")


# --- --scope and --trace ---


def test_scope_forms():
    scope = parse_scope(["comm=bash,sh", "comm!=sshd", "pid=1,42", "uid=0,1000", "follow", "host"])
    assert scope == Scope(
        comm=(b"bash", b"sh"),
        comm_not=(b"sshd",),
        pid=(1, 42),
        uid=(0, 1000),
        follow=True,
        container=False,
    )
    assert parse_scope(["container", "container"]).container is True


def test_scope_accumulates():
    config = parse_args(["-s", "comm=a", "--scope", "comm=b,a", "--scope=pid=7", "-spid=8"])
    assert config.scope.comm == (b"a", b"b")
    assert config.scope.pid == (7, 8)


def test_scope_container_and_host_exclude_each_other():
    with raises("conflicting --scope container/host: 'container' and 'host'"):
        parse_scope(["container", "host"])


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("comm=" + "x" * 16, "is 16 bytes; the kernel keeps at most 15"),
        ("comm=", "invalid process name '' in 'comm='"),
        ("comm=a,,b", "invalid process name '' in 'comm=a,,b'"),
        ("pid=0", "invalid pid '0' in 'pid=0' (accepted: pid=N[,N] with 0 < N <= 4194304)"),
        ("pid=-1", "invalid pid '-1'"),
        ("pid=abc", "invalid pid 'abc'"),
        ("pid=99999999999999999999999", "invalid pid '99999999999999999999999'"),
        ("uid=-1", "invalid uid '-1' in 'uid=-1' (accepted: uid=N[,N] with 0 <= N <= 4294967294)"),
        ("uid=4294967295", "invalid uid '4294967295'"),
        ("container=abc", "invalid container id 'abc' in 'container=abc' (accepted: container=ID"),
        ("container=" + "A" * 12, "invalid container id 'AAAAAAAAAAAA'"),
        ("bogus", "invalid scope expression: 'bogus' (accepted: comm=NAME[,NAME], comm!=NAME"),
        ("event=vfs_write", "invalid scope expression: 'event=vfs_write'"),
    ],
)
def test_scope_errors(token: str, message: str):
    with raises(message):
        parse_scope([token])


def test_scope_container_ids():
    full = "ab" * 32
    scope = parse_scope([f"container={full},0123456789ab", "container"])
    assert scope.container is True
    assert scope.container_ids == (full, "0123456789ab")
    with raises("conflicting --scope container/host"):
        parse_scope(["host", f"container={full}"])


def test_comm_of_fifteen_bytes_is_fine():
    assert parse_scope(["comm=" + "x" * 15]).comm == (b"x" * 15,)


def test_trace_is_an_alias_of_scope():
    config = parse_args(["--trace", "comm=bash", "-t", "follow", "--trace=pid=3"])
    assert config.scope == Scope(comm=(b"bash",), pid=(3,), follow=True)


def test_trace_event_adds_to_events():
    config = parse_args(
        ["-e", "vfs_write,vfs_read", "--trace", "event=sched_process_exec,vfs_write"]
    )
    assert config.events == ("vfs_write", "vfs_read", "sched_process_exec")
    assert config.scope == Scope()


def test_trace_errors_name_the_token():
    with raises("invalid event name 'nope' in 'event=nope'"):
        parse_args(["--trace", "event=nope"])
    with raises("invalid scope expression: 'bogus'"):
        parse_args(["--trace", "bogus"])


# --- --events and --output ---


def test_every_event_name_is_accepted():
    assert parse_args(["--events", ",".join(EVENT_NAMES)]).events == EVENT_NAMES


def test_unknown_event_lists_the_names():
    with raises("invalid event name 'open' in 'vfs_write,open' (accepted: --events NAME[,NAME]"):
        parse_args(["--events", "vfs_write,open"])
    with raises("net_packet_http, sched_process_fork, sched_process_exit)"):
        parse_args(["-e", "open"])


@pytest.mark.parametrize(
    ("values", "output"),
    [
        ((), "none"),
        (("json",), "json"),
        (("format:json",), "json"),
        (("none",), "none"),
        (("option:parse-arguments", "json", "option:detect-syscall"), "json"),
        (("json", "format:json"), "json"),
    ],
)
def test_output(values: tuple[str, ...], output: str):
    assert parse_args([arg for value in values for arg in ("-o", value)]).output == output


def test_output_errors():
    with raises("invalid --output value: 'table' (accepted: json, none, format:json"):
        parse_args(["--output", "table"])
    with raises("conflicting --output format: 'json' and 'none'"):
        parse_args(["-o", "json", "-o", "none"])


# --- argv handling ---


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus", "x"], "unknown option '--bogus' (accepted: --capture/-c OPT"),
        (["exec"], "unknown option 'exec'"),
        (["--cap", "exec"], "unknown option '--cap'"),
        (["--capture"], "option '--capture' needs a value"),
        (["-c", "exec", "-s"], "option '-s' needs a value"),
        (["--config", "f"], "unknown option '--config' (config files cannot include others)"),
        (["-c", "--scope"], "invalid capture option specified: '--scope'"),
    ],
)
def test_argv_errors(argv: list[str], message: str):
    with raises(message):
        parse_args(argv)


def test_argv_forms():
    config = parse_args(["--capture=exec", "-cmem", "-c", "module", "--capture", "bpf"])
    assert config.kinds() == ("exec", "mem", "module", "bpf")


def test_single_dash_long_flags_as_gos_flag_package_reads_them():
    config = parse_args(["-trace", "comm=ping", "-capture", "exec", "-capture=mem",
                         "-scope=uid=0", "-events", "vfs_write", "-output=json",
                         "-server", "metrics"])  # fmt: skip
    assert config.scope.comm == (b"ping",) and config.scope.uid == (0,)
    assert config.kinds() == ("exec", "mem")
    assert (config.events, config.output, config.server.metrics) == (("vfs_write",), "json", True)
    # the short forms with a value attached still work
    assert parse_args(["-tcomm=bash"]).scope.comm == (b"bash",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-tracee", "comm=ping"], "unknown option '-tracee' (did you mean -trace?)"),
        (["-outpt", "json"], "unknown option '-outpt' (did you mean -output?)"),
        (["-capture"], "option '-capture' needs a value"),
    ],
)
def test_a_misspelt_single_dash_flag_is_named_as_typed(argv: list[str], message: str):
    with raises(message):
        parse_args(argv)


def test_output_merged_io():
    assert parse_args(["-o", "json", "-o", "option:merged-io"]).merged_io
    assert not parse_args(["-o", "json"]).merged_io


# --- --config files ---


def test_expand_config_file():
    text = """
# capture what the dropper writes
--capture write=/tmp/*   --capture exec   # two per line
--scope 'comm=my prog' -c "dir:/srv/cap #1"
-c dir:/srv/a#b  # '#' inside a word is not a comment
"""
    assert expand_config_file(text) == [
        "--capture",
        "write=/tmp/*",
        "--capture",
        "exec",
        "--scope",
        "comm=my prog",
        "-c",
        "dir:/srv/cap #1",
        "-c",
        "dir:/srv/a#b",
    ]


def test_config_file_then_command_line_adds():
    from_file = expand_config_file("-c write=/etc/*\n-s comm=bash\n")
    config = parse_args([*from_file, "-c", "exec", "-s", "comm=sh"])
    assert config.kinds() == ("write", "exec")
    assert config.scope.comm == (b"bash", b"sh")


def test_config_file_quoting_errors():
    with raises("config file: No closing quotation in the token starting 'comm=a\\n'"):
        expand_config_file("-c exec\n-s 'comm=a\n")
    with raises("config file: No escaped character in the token starting 'exec'"):
        expand_config_file("-c exec\\")


def test_empty_config_file():
    assert expand_config_file("# nothing\n\n") == []


# --- properties ---

_TOKEN_PARTS = st.sampled_from(
    [
        "write",
        "read",
        "=",
        ":",
        ",",
        "*",
        "/",
        "path",
        "type",
        "fd",
        "pcap",
        "net",
        "artifact:",
        "-snaplen:",
        "-options:",
        "dir:",
        "limit:",
        "kb",
        "mb",
        "comm",
        "pid",
        "uid",
        "!=",
        "event",
        "-c",
        "--capture",
        "-s",
        "-t",
        "-e",
        "-o",
        "--output",
        "json",
        "1",
        "99999",
        "\udcff",
        "\ud800",
        "\0",
    ]
)
_TOKENS = st.one_of(
    st.text(st.characters(blacklist_categories=())),
    st.lists(_TOKEN_PARTS, max_size=6).map("".join),
)


@given(st.lists(_TOKENS, max_size=8))
def test_parse_args_only_raises_option_error(argv: list[str]):
    try:
        config = parse_args(argv)
    except OptionError as exc:
        assert str(exc)
    else:
        assert len(config.write.paths) <= 3
        assert len(config.read.paths) <= 3
        assert all(0 < len(p) <= 50 for p in config.write.paths + config.read.paths)
        assert config.out_dir.endswith("/out")


@given(st.lists(st.lists(_TOKEN_PARTS, max_size=4).map("".join), max_size=6))
def test_capture_order_never_matters(tokens: list[str]):
    argv = [arg for token in tokens for arg in ("-c", token)]
    reversed_argv = [arg for token in reversed(tokens) for arg in ("-c", token)]
    try:
        config = parse_args(argv)
    except OptionError:
        with pytest.raises(OptionError):
            parse_args(reversed_argv)
    else:
        assert parse_args(reversed_argv) == config


@given(st.text(st.characters(blacklist_categories=())))
def test_expand_config_file_only_raises_option_error(text: str):
    try:
        tokens = expand_config_file(text)
    except OptionError:
        return
    assert all(isinstance(token, str) for token in tokens)


# --- limits checked before anything starts: dir: encoding and lengths, --ring-mb ---


def test_dir_not_utf8_is_refused_naming_the_byte():
    # argv's undecodable bytes arrive as surrogate escapes (b"\xff" is "\udcff")
    with raises(
        "capture output dir is not valid UTF-8: 'dir:/srv/a\\xff' has byte 0xff at offset 6"
    ):
        cap("dir:/srv/a\udcff")


def test_dir_utf8_beyond_ascii_is_kept():
    assert cap("dir:/srv/café/").dir == "/srv/café"
    assert cap("dir:/srv/café").out_dir == "/srv/café/out"


def test_dir_escaped_bytes_that_form_utf8_are_that_text():
    # b"\xc3\xa9" typed in a non-UTF-8 locale: the bytes on disk are UTF-8 "é"
    assert cap("dir:/srv/caf\udcc3\udca9").dir == "/srv/café"


def test_dir_name_longer_than_name_max_is_refused():
    assert cap("dir:/srv/" + "n" * options.NAME_MAX).dir == "/srv/" + "n" * options.NAME_MAX
    with raises(f"capture output dir has a name of {options.NAME_MAX + 1} bytes, over the 255"):
        cap("dir:/srv/" + "n" * (options.NAME_MAX + 1))


def test_dir_name_max_counts_bytes_not_characters():
    with raises("capture output dir has a name of 256 bytes"):
        cap("dir:/srv/" + "é" * 128)


def _path_of_length(size: int) -> str:
    """An absolute path of exactly ``size`` bytes made of 200-byte names."""
    parts, left = [], size
    while left > 201:
        parts.append("d" * 200)
        left -= 201
    parts.append("e" * (left - 1))
    return "/" + "/".join(parts)


def test_dir_and_its_longest_artifact_path_fit_path_max():
    longest = _path_of_length(options.MAX_DIR_BYTES)
    assert len(longest) == options.MAX_DIR_BYTES
    assert cap(f"dir:{longest}").dir == longest
    artifact = f"{longest}/out/{'c' * 64}/{'a' * options.NAME_MAX}"
    assert len(artifact.encode()) == options.PATH_MAX - 1
    too_long = _path_of_length(options.MAX_DIR_BYTES + 1)
    with raises(f"capture output dir is {options.MAX_DIR_BYTES + 1} bytes: with its artifact"):
        cap(f"dir:{too_long}")
    with raises(f"PATH_MAX ({options.PATH_MAX})"):
        cap(f"dir:{too_long}")


def test_max_artifact_relpath_covers_what_the_writers_name():
    """MAX_DIR_BYTES rests on writers/naming.py: check the longest names it makes."""
    from writers import naming

    assert naming.NAME_MAX == options.NAME_MAX
    cid = "f" * 64
    assert naming.container_dir(cid) == cid
    hostile = b"\xff" * 4000
    longest_names = [
        naming.exec_artifact_name(2**64 - 1, b"/" + hostile, memfd=True),
        naming.exec_artifact_name(2**64 - 1, b"/memfd:" + hostile, memfd=True),
        naming.bpf_artifact_name(hostile, 2**32, "0" * 64),
        naming.module_artifact_name(2**64 - 1, 2**64 - 1, 2**32, "0" * 64),
        naming.mem_artifact_name(2**32, 2**64 - 1),
        naming.file_artifact_name("write", 2**64 - 1, 2**64 - 1, 2**32),
    ]
    for name in longest_names:
        # the writer may add ".<n>" on a collision, within COLLISION_ROOM
        assert len(name.encode()) + naming.COLLISION_ROOM <= options.NAME_MAX, name
        assert len(f"{cid}/{name}".encode()) <= options.MAX_ARTIFACT_RELPATH
    pcap = "/".join(
        (
            "pcap",
            "processes",
            naming.container_short(cid),
            naming.pcap_process_name(b"\xff" * 16, 2**32, 2**64 - 1),
        )
    )
    assert len(pcap.encode()) <= options.MAX_ARTIFACT_RELPATH


@pytest.mark.parametrize(("value", "size"), [("1", 1), ("8", 8), ("08", 8), ("2048", 2048)])
def test_ring_mb(value: str, size: int):
    assert options.parse_ring_mb(value) == size


@pytest.mark.parametrize(
    "value", ["0", "3", "4096", "8192", "2**31", "", "+8", " 8", "8 ", "²", "٨", "1_024", "99" * 20]
)
def test_ring_mb_invalid(value: str):
    with raises(f"--ring-mb {value!r}: expected a power of two from 1 to 2048 (MiB)"):
        options.parse_ring_mb(value)


GIB_KIB = 1 << 20


@pytest.mark.parametrize(
    ("mem_total_kib", "ring_mb"),
    [
        (None, options.RING_FLOOR_MB),  # /proc/meminfo unreadable
        (0, options.RING_FLOOR_MB),
        (512 << 10, options.RING_FLOOR_MB),  # 512 MiB: a 4 MiB share, the floor holds
        (1 * GIB_KIB, 8),
        (2 * GIB_KIB, 16),
        (3 * GIB_KIB, 16),  # 24 MiB share, rounded down to a power of two
        (4 * GIB_KIB, 32),
        (24684092, 128),  # this development host (24 GB)
        (32 * GIB_KIB, 256),
        (1024 * GIB_KIB, options.RING_CAP_MB),  # the cap holds
    ],
)
def test_ring_mb_for_memory(mem_total_kib: int | None, ring_mb: int):
    assert options.ring_mb_for_memory(mem_total_kib) == ring_mb


@pytest.mark.parametrize("kib", [None, 1, 777_777, 24684092, 1 << 40])
def test_the_automatic_ring_is_one_that_parse_ring_mb_accepts(kib: int | None):
    size = options.ring_mb_for_memory(kib)
    assert options.parse_ring_mb(str(size)) == size
    assert options.RING_FLOOR_MB <= size <= options.RING_CAP_MB


MEMINFO = "MemTotal:       24684092 kB\nMemFree:         1234 kB\nMemAvailable:   99 kB\n"


@pytest.mark.parametrize(
    ("text", "kib"),
    [
        (MEMINFO, 24684092),
        ("MemFree: 5 kB\nMemTotal: 2048 kB\n", 2048),
        ("MemFree: 5 kB\n", None),
        ("MemTotal: many kB\n", None),
        ("MemTotal: 2048\n", None),
        ("MemTotal: 2048 MB\n", None),
        ("", None),
    ],
)
def test_mem_total_kib(text: str, kib: int | None):
    assert options.mem_total_kib(text) == kib


def test_ring_mb_max_is_the_largest_power_of_two_a_u32_holds():
    """max_entries of BPF_MAP_CREATE is a u32: the next power of two would not fit."""
    size = options.MAX_RING_MB << 20
    assert size == 2**31
    assert size < 2**32 <= size * 2
    assert size & (size - 1) == 0
