"""tracee_json: bus messages as Tracee v0.17's `--output json` events, each decoded by the strict
decoder (tests/support/tracee_decode.py) against its schema."""

import json

import pytest

from tests.support import tracee_decode
from tests.support.envelopes import bpf_env, exit_env, fork_env, mem_env, module_env, proc_env
from tracecap import bus
from tracecap.frontend import tracee_json
from tracecap.frontend.tracee_json import events_for, file_events


def file_env(**overrides) -> dict:
    env = {
        "v": 1, "epoch": 1, "seq": 9,
        "ts": 1_700_000_000_123_456_789, "pid": 4321, "tid": 4322, "ppid": 1, "uid": 1000,
        "comm": b"cp", "cgroup_id": 8888, "container_id": "abc123", "cpu": 1,
        "syscall": "write", "fd": 3, "path": b"/tmp/dst", "path_truncated": False,
        "dev": 0x800001, "inode": 131, "mode": 0o100644, "io_id": 5, "io_len": 4096,
        "append": False, "io_off": 0, "off": 8192,
    }  # fmt: skip
    env.update(overrides)
    return env


def msg(topic: bytes = bus.TOPIC_FILE_WRITE, payload: bytes = b"x" * 10, **env) -> bus.Message:
    return bus.Message(topic, file_env(**env), payload)


def checked(event: dict) -> dict:
    """The event as a consumer decodes it: through JSON and the strict decoder."""
    return tracee_decode.decode(json.dumps(event))


def file_event(env: dict, topic: bytes = bus.TOPIC_FILE_WRITE) -> dict | None:
    events = file_events(env, topic)
    assert len(events) <= 1
    return checked(events[0]) if events else None


def test_file_event_fields_are_tracees():
    event = file_event(file_env())
    assert event == {
        "timestamp": 1_700_000_000_123_456_789,
        "threadStartTime": 0,
        "processorId": 1,
        "processId": 4321,
        "cgroupId": 8888,
        "threadId": 4322,
        "parentProcessId": 1,
        "hostProcessId": 4321,
        "hostThreadId": 4322,
        "hostParentProcessId": 1,
        "userId": 1000,
        "mountNamespace": 0,
        "pidNamespace": 0,
        "processName": "cp",
        "hostName": tracee_json._HOSTNAME,
        "containerId": "abc123",
        "container": {"id": "abc123"},
        "kubernetes": {},
        "eventId": "718",
        "eventName": "vfs_write",
        "matchedPolicies": [""],
        "argsNum": 5,
        "returnValue": 4096,
        "syscall": "write",
        "stackAddresses": None,
        "contextFlags": {"containerStarted": True, "isCompat": False},
        "args": [
            {"name": "pathname", "type": "const char*", "value": "/tmp/dst"},
            {"name": "dev", "type": "dev_t", "value": 0x800001},
            {"name": "inode", "type": "unsigned long", "value": 131},
            {"name": "count", "type": "size_t", "value": 4096},
            {"name": "pos", "type": "off_t", "value": 8192},
        ],
    }
    assert list(event) == [name for name, _ in tracee_decode.schemas.ENVELOPE]


def test_container_and_kubernetes_come_from_the_enrichment_keys():
    env = file_env(container_name="web", container_image="nginx:1.25",
                   container_image_digest="sha256:ab", pod_name="web-0", pod_namespace="prod",
                   pod_uid="u-1")  # fmt: skip
    event = file_event(env)
    assert event["container"] == {"id": "abc123", "name": "web", "image": "nginx:1.25",
                                  "imageDigest": "sha256:ab"}  # fmt: skip
    assert event["kubernetes"] == {"podName": "web-0", "podNamespace": "prod", "podUID": "u-1"}
    host = file_event(file_env(container_id=""))
    assert (host["container"], host["contextFlags"]["containerStarted"]) == ({}, False)


def test_a_merged_run_is_one_event_per_syscall():
    ios = [[10, 4096], [20, 4096], [30, 100]]
    env = file_env(io_count=3, io_len=8292, ios=ios, off=0)
    events = [checked(e) for e in file_events(env)]
    assert [e["timestamp"] for e in events] == [10, 20, 30]
    assert [e["returnValue"] for e in events] == [4096, 4096, 100]
    assert [e["args"][4]["value"] for e in events] == [0, 4096, 8192]
    assert [e["args"][3]["value"] for e in events] == [4096, 4096, 100]


def test_merged_io_prints_a_run_as_one_event():
    env = file_env(io_count=3, io_len=8292, ios=[[10, 4096], [20, 4096], [30, 100]])
    (event,) = file_events(env, merged=True)
    assert checked(event)["returnValue"] == 8292


@pytest.mark.parametrize(
    ("syscall", "name", "printed"),
    [
        ("write", "vfs_write", "write"),
        ("pwrite64", "vfs_write", "pwrite64"),
        ("writev", "vfs_writev", "writev"),
        ("pwritev", "vfs_writev", "pwritev"),
        ("pwritev2", "vfs_writev", "pwritev2"),
        ("read", "vfs_read", "read"),
        ("pread64", "vfs_read", "pread64"),
        ("readv", "vfs_readv", "readv"),
        ("preadv", "vfs_readv", "preadv"),
        ("preadv2", "vfs_readv", "preadv2"),
        ("io_uring_writev", "vfs_writev", "io_uring_enter"),
    ],
)
def test_event_name_by_syscall(syscall, name, printed):
    event = file_event(file_env(syscall=syscall))
    assert event["eventName"] == name
    assert event["syscall"] == printed


def test_every_kernel_syscall_has_a_tracee_name():
    from bpf.records import SYSCALLS

    assert set(tracee_json._EVENT_NAMES) == set(SYSCALLS)


def test_a_transfer_is_a_write_of_its_destination_and_a_read_of_its_source():
    env = file_env(syscall="copy_file_range")
    assert file_event(env)["eventName"] == "vfs_write"
    read = file_event(env, bus.TOPIC_FILE_READ)
    assert (read["eventName"], read["syscall"]) == ("vfs_read", "copy_file_range")


def test_only_the_first_message_of_an_io_gives_an_event():
    assert file_event(file_env(io_off=0)) is not None
    assert file_event(file_env(io_off=262144, off=8192 + 262144)) is None
    assert events_for(msg(io_off=262144), ()) == []


def test_a_syscall_whose_first_bytes_were_lost_still_gives_its_event():
    assert file_event(file_env(io_off=0, lost=[[0, 4096]])) is not None
    assert events_for(msg(payload=b"", io_off=0, lost=[[0, 4096]]), ()) != []
    assert file_event(file_env(io_off=4096, lost=[[8192, 12288]])) is None


def test_events_for_read_and_write_topics_only():
    assert events_for(msg(bus.TOPIC_FILE_READ, syscall="readv"), ())[0]["eventName"] == "vfs_readv"
    assert events_for(msg(bus.TOPIC_FILE_WRITE), ())[0]["eventName"] == "vfs_write"
    assert events_for(bus.Message(bus.TOPIC_STATS, {"state": "ready"}, b""), ()) == []
    assert events_for(msg(bus.TOPIC_EXEC), ()) == []


def test_events_filter():
    write = msg(syscall="pwrite64")
    read = msg(bus.TOPIC_FILE_READ, syscall="read")
    assert events_for(write, ("vfs_write",))[0]["eventName"] == "vfs_write"
    assert events_for(read, ("vfs_write",)) == []
    assert events_for(read, ("vfs_write", "vfs_read"))[0]["eventName"] == "vfs_read"
    assert events_for(write, ("vfs_writev",)) == []
    assert events_for(write, ("sched_process_exec",)) == []


def test_invalid_utf8_comm_and_path_become_escaped_text():
    event = file_event(file_env(comm=b"ev\xffil\x00", path=b"/tmp/\xc3(\xe2\x82/\xf0x"))
    assert event["processName"] == "ev\\xffil\x00"
    assert event["args"][0]["value"] == "/tmp/\\xc3(\\xe2\\x82/\\xf0x"
    line = json.dumps(event)
    assert "\n" not in line
    line.encode("utf-8")  # no lone surrogates


def test_valid_utf8_is_kept():
    event = file_event(file_env(comm="café".encode(), path="/tmp/日本".encode()))
    assert event["processName"] == "café"
    assert event["args"][0]["value"] == "/tmp/日本"


def test_a_pipe_has_no_pathname_as_in_tracee():
    env = file_env(append=True, off=0, path=b"pipe:[99]", syscall="read", mode=0o010600)
    event = file_event(env, bus.TOPIC_FILE_READ)
    assert event["args"][0]["value"] == ""
    assert event["args"][4]["value"] == 0
    assert event["eventName"] == "vfs_read"


def test_the_collectors_extent_announcement_is_no_event():
    assert file_event(file_env(io_off=0, io_len=0, io_count=0, off=500, extent=500)) is None


def test_exec_event_has_tracees_sixteen_arguments():
    env = dict(proc_env(), exe_path=b"/usr/bin/payload", cpu=0, stdin_mode=0o020644,
               stdin_path=b"/dev/pts/3", from_kernel=True)  # fmt: skip
    (event,) = events_for(bus.Message(bus.TOPIC_PROC, env, b""), ())
    event = checked(event)
    args = {a["name"]: a["value"] for a in event["args"]}
    assert event["eventId"] == "713" and event["argsNum"] == 16
    assert (args["cmdpath"], args["pathname"]) == ("/tmp/payload", "/usr/bin/payload")
    assert args["argv"] == ["/tmp/payload", "-x"]
    assert (args["stdin_type"], args["stdin_path"], args["invoked_from_kernel"]) == (
        "S_IFCHR", "/dev/pts/3", 1
    )  # fmt: skip
    assert (event["syscall"], event["returnValue"]) == ("execve", 0)


def test_module_events():
    printer = tracee_json.EventPrinter()
    env = dict(module_env(addr=0x7F00, obj_len=4096), cpu=0)
    (init,) = printer.events_for(bus.Message(bus.TOPIC_MODULE, env, b""), ())
    init = checked(init)
    assert [a["value"] for a in init["args"]] == ["0x7f00", 4096, ""]
    assert (init["eventId"], init["returnValue"], init["syscall"]) == ("175", -38, "init_module")
    env = dict(module_env(syscall="finit_module", fd=3, obj_id=2, params=b"x=1", ret=0), cpu=0)
    (finit,) = printer.events_for(bus.Message(bus.TOPIC_MODULE, env, b""), ())
    assert [a["value"] for a in checked(finit)["args"]] == [3, "x=1", 0]


def test_bpf_event_names_the_helpers_its_instructions_call():
    call = bytes([0x85, 0, 0, 0]) + (14).to_bytes(4, "little")  # get_current_pid_tgid
    lookup = bytes([0x85, 0, 0, 0]) + (1).to_bytes(4, "little")
    local = bytes([0x85, 0x10, 0, 0]) + (5).to_bytes(4, "little")  # a BPF-to-BPF call
    exit_ = bytes([0x95]) + bytes(7)
    payload = call + lookup + call + local + exit_
    env = bpf_env(insn_cnt=5, obj_len=40)
    (event,) = tracee_json.EventPrinter().events_for(bus.Message(bus.TOPIC_BPF, env, payload), ())
    assert checked(event)["args"][2]["value"] == ["map_lookup_elem", "get_current_pid_tgid"]


def test_bpf_event():
    (event,) = tracee_json.EventPrinter().events_for(bus.Message(bus.TOPIC_BPF, bpf_env(), b""), ())
    event = checked(event)
    assert [a["value"] for a in event["args"]] == [
        "BPF_PROG_TYPE_SOCKET_FILTER",
        "probe",
        [],
        0,
        True,
    ]
    assert event["eventId"] == "776"


def mem_msg(**env) -> bus.Message:
    return bus.Message(bus.TOPIC_MEM, dict(mem_env(), epoch=1, seq=0, v=1, **env), b"")


def test_mem_prot_alert_is_tracees():
    (event,) = tracee_json.EventPrinter().events_for(mem_msg(), ())
    event = checked(event)
    assert event["eventName"] == "mem_prot_alert"
    assert event["args"] == [
        {"name": "alert", "type": "string", "value": "Protection changed from W to E!"},
        {"name": "addr", "type": "void*", "value": "0x7f0000000000"},
        {"name": "len", "type": "size_t", "value": 4096},
        {"name": "prot", "type": "string", "value": "PROT_READ|PROT_EXEC"},
        {"name": "prev_prot", "type": "string", "value": "PROT_READ|PROT_WRITE"},
        {"name": "pathname", "type": "const char*", "value": ""},
        {"name": "dev", "type": "dev_t", "value": 0},
        {"name": "inode", "type": "unsigned long", "value": 0},
        {"name": "ctime", "type": "u64", "value": 0},
    ]
    assert event["syscall"] == "mprotect"


def test_a_mem_message_without_alert_prints_nothing():
    printer = tracee_json.EventPrinter()
    assert printer.events_for(mem_msg(alert="", syscall="exit", obj_id=2), ()) == []


@pytest.mark.parametrize(("prot", "text"), [(0, "PROT_NONE"), (7, "PROT_READ|PROT_WRITE|PROT_EXEC"),
                                            (4, "PROT_EXEC")])  # fmt: skip
def test_tracee_prot(prot, text):
    assert tracee_json.tracee_prot(prot) == text


def _args(event: dict) -> dict:
    return {a["name"]: a["value"] for a in checked(event)["args"]}


def test_a_script_exec_names_script_interpreter_and_interp_as_tracee_does():
    env = proc_env(path=b"/usr/bin/dash", exe_path=b"/usr/bin/dash", cmdpath=b"./run.sh",
                   interp=b"/bin/sh", dev=7, inode=8, ctime=9, cpu=0,
                   argv=[b"/bin/sh", b"./run.sh", b"x"])  # fmt: skip
    (event,) = events_for(bus.Message(bus.TOPIC_PROC, env, b""), ("sched_process_exec",))
    args = _args(event)
    assert (args["cmdpath"], args["pathname"], args["interp"]) == (
        "./run.sh",
        "/usr/bin/dash",
        "/bin/sh",
    )
    assert (args["interpreter_pathname"], args["interpreter_dev"], args["interpreter_inode"],
            args["interpreter_ctime"]) == ("/usr/bin/dash", 7, 8, 9)  # fmt: skip
    assert args["argv"] == ["/bin/sh", "./run.sh", "x"]


def test_a_plain_exec_has_no_interpreter_and_interp_is_its_name():
    env = proc_env(path=b"/usr/bin/true", exe_path=b"/usr/bin/true", cmdpath=b"/usr/bin/true",
                   cpu=0)  # fmt: skip
    (event,) = events_for(bus.Message(bus.TOPIC_PROC, env, b""), ())
    args = _args(event)
    assert (args["cmdpath"], args["interp"], args["interpreter_pathname"]) == (
        "/usr/bin/true",
        "/usr/bin/true",
        "",
    )
    assert (args["interpreter_dev"], args["interpreter_inode"], args["interpreter_ctime"]) == (
        0,
        0,
        0,
    )


def test_forks_and_exits_are_printed_only_when_named():
    fork, exit_ = (bus.Message(bus.TOPIC_PROC, env, b"") for env in (fork_env(), exit_env()))
    assert events_for(fork, ()) == [] and events_for(exit_, ()) == []
    assert events_for(fork, ("sched_process_exec",)) == []
    assert [
        e["eventName"] for e in events_for(bus.Message(bus.TOPIC_PROC, proc_env(), b""), ())
    ] == ["sched_process_exec"]
    (printed,) = events_for(fork, ("sched_process_fork",))
    tracee_decode.decode(json.dumps(printed))
    args = {a["name"]: a["value"] for a in printed["args"]}
    assert (printed["hostProcessId"], args["parent_pid"], args["child_pid"]) == (
        printed["hostProcessId"], printed["hostProcessId"], 4243,
    )  # fmt: skip
    assert (args["child_ns_pid"], args["start_time"]) == (43, 1_700_000_000_000_000_123)
    (printed,) = events_for(exit_, ("sched_process_exit",))
    assert [a["value"] for a in printed["args"]] == [3 << 8, True]
    assert printed["syscall"] == "" and printed["eventId"] == "714"
