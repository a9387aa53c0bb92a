"""tracee_json: bus file messages as Tracee's `--output json` events."""

import json

import pytest

from tests.support.envelopes import mem_env, proc_env
from tracecap import bus
from tracecap.frontend import tracee_json
from tracecap.frontend.tracee_json import event_for, file_event


def file_env(**overrides) -> dict:
    env = {
        "v": 1, "epoch": 1, "seq": 9,
        "ts": 1_700_000_000_123_456_789, "pid": 4321, "tid": 4322, "ppid": 1, "uid": 1000,
        "comm": b"cp", "cgroup_id": 8888, "container_id": "abc123",
        "syscall": "write", "fd": 3, "path": b"/tmp/dst", "path_truncated": False,
        "dev": 0x800001, "inode": 131, "mode": 0o100644, "io_id": 5, "io_len": 4096,
        "append": False, "io_off": 0, "off": 8192,
    }  # fmt: skip
    env.update(overrides)
    return env


def msg(topic: bytes = bus.TOPIC_FILE_WRITE, payload: bytes = b"x" * 10, **env) -> bus.Message:
    return bus.Message(topic, file_env(**env), payload)


def test_file_event_fields_are_tracees():
    event = file_event(file_env())
    assert event == {
        "timestamp": 1_700_000_000_123_456_789,
        "processId": 4321,
        "threadId": 4322,
        "parentProcessId": 1,
        "hostProcessId": 4321,
        "hostThreadId": 4322,
        "hostParentProcessId": 1,
        "userId": 1000,
        "processName": "cp",
        "hostName": tracee_json._HOSTNAME,
        "cgroupId": 8888,
        "containerId": "abc123",
        "eventName": "vfs_write",
        "syscall": "write",
        "returnValue": 4096,
        "argsNum": 6,
        "args": [
            {"name": "pathname", "type": "const char*", "value": "/tmp/dst"},
            {"name": "dev", "type": "dev_t", "value": 0x800001},
            {"name": "inode", "type": "unsigned long", "value": 131},
            {"name": "count", "type": "size_t", "value": 4096},
            {"name": "pos", "type": "off_t", "value": 8192},
            {"name": "syscalls", "type": "unsigned int", "value": 1},
        ],
    }
    assert json.loads(json.dumps(event)) == event


def test_a_merged_run_of_syscalls_is_one_event_that_says_how_many():
    event = file_event(file_env(io_count=3, io_len=12288))
    assert event is not None
    assert event["returnValue"] == 12288
    assert event["args"][-1] == {"name": "syscalls", "type": "unsigned int", "value": 3}


@pytest.mark.parametrize(
    ("syscall", "name"),
    [
        ("write", "vfs_write"),
        ("pwrite64", "vfs_write"),
        ("writev", "vfs_writev"),
        ("pwritev", "vfs_writev"),
        ("pwritev2", "vfs_writev"),
        ("read", "vfs_read"),
        ("pread64", "vfs_read"),
        ("readv", "vfs_readv"),
        ("preadv", "vfs_readv"),
        ("preadv2", "vfs_readv"),
    ],
)
def test_event_name_by_syscall(syscall, name):
    event = file_event(file_env(syscall=syscall))
    assert event["eventName"] == name
    assert event["syscall"] == syscall


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
    assert event_for(msg(io_off=262144), ()) is None


def test_a_syscall_whose_first_bytes_were_lost_still_gives_its_event():
    assert file_event(file_env(io_off=0, lost=[[0, 4096]])) is not None
    assert event_for(msg(payload=b"", io_off=0, lost=[[0, 4096]]), ()) is not None
    assert file_event(file_env(io_off=4096, lost=[[8192, 12288]])) is None


def test_empty_lost_list_is_not_a_loss():
    assert file_event(file_env(lost=[])) is not None


def test_event_for_read_and_write_topics_only():
    assert event_for(msg(bus.TOPIC_FILE_READ, syscall="readv"), ())["eventName"] == "vfs_readv"
    assert event_for(msg(bus.TOPIC_FILE_WRITE), ())["eventName"] == "vfs_write"
    assert event_for(bus.Message(bus.TOPIC_STATS, {"state": "ready"}, b""), ()) is None
    assert event_for(msg(bus.TOPIC_EXEC), ()) is None


def test_events_filter():
    write = msg(syscall="pwrite64")
    read = msg(bus.TOPIC_FILE_READ, syscall="read")
    assert event_for(write, ("vfs_write",))["eventName"] == "vfs_write"
    assert event_for(read, ("vfs_write",)) is None
    assert event_for(read, ("vfs_write", "vfs_read"))["eventName"] == "vfs_read"
    assert event_for(write, ("vfs_writev",)) is None
    assert event_for(write, ("sched_process_exec",)) is None


def test_invalid_utf8_comm_and_path_become_escaped_text():
    event = file_event(file_env(comm=b"ev\xffil\x00", path=b"/tmp/\xc3(\xe2\x82/\xf0x"))
    assert event["processName"] == "ev\\xffil\x00"
    assert event["args"][0]["value"] == "/tmp/\\xc3(\\xe2\\x82/\\xf0x"
    line = json.dumps(event)
    assert "\n" not in line
    assert json.loads(line)["processName"] == "ev\\xffil\x00"
    line.encode("utf-8")  # no lone surrogates


def test_valid_utf8_is_kept():
    event = file_event(file_env(comm="café".encode(), path="/tmp/日本".encode()))
    assert event["processName"] == "café"
    assert event["args"][0]["value"] == "/tmp/日本"


def test_append_stream_reports_its_io_offset_as_pos():
    event = file_event(file_env(append=True, off=0, path=b"pipe:[99]", syscall="read"))
    assert event["args"][0]["value"] == "pipe:[99]"
    assert event["args"][4]["value"] == 0
    assert event["eventName"] == "vfs_read"


def test_the_collectors_extent_announcement_is_no_event():
    assert file_event(file_env(io_off=0, io_len=0, io_count=0, off=500, extent=500)) is None


def mem_msg(**env) -> bus.Message:
    return bus.Message(bus.TOPIC_MEM, dict(mem_env(), epoch=1, seq=0, v=1, **env), b"")


def test_mem_prot_alert_is_tracees():
    event = tracee_json.EventPrinter().event_for(mem_msg(), ())
    assert event is not None and event["eventName"] == "mem_prot_alert"
    assert event["args"] == [
        {"name": "alert", "type": "string", "value": "Protection changed from W to E!"},
        {"name": "addr", "type": "void*", "value": "0x7f0000000000"},
        {"name": "len", "type": "size_t", "value": 4096},
        {"name": "prot", "type": "string", "value": "PROT_READ|PROT_EXEC"},
        {"name": "prev_prot", "type": "string", "value": "PROT_READ|PROT_WRITE"},
    ]
    assert event["syscall"] == "mprotect"


def test_a_mem_message_without_alert_prints_nothing():
    printer = tracee_json.EventPrinter()
    assert printer.event_for(mem_msg(alert="", syscall="exit", obj_id=2), ()) is None


@pytest.mark.parametrize(("prot", "text"), [(0, "PROT_NONE"), (7, "PROT_READ|PROT_WRITE|PROT_EXEC"),
                                            (4, "PROT_EXEC")])  # fmt: skip
def test_tracee_prot(prot, text):
    assert tracee_json.tracee_prot(prot) == text


def _args(event: dict) -> dict:
    return {a["name"]: a["value"] for a in event["args"]}


def test_a_script_exec_names_script_interpreter_and_interp_as_tracee_does():
    env = proc_env(path=b"/usr/bin/dash", cmdpath=b"./run.sh", interp=b"/bin/sh", dev=7,
                   inode=8, ctime=9, argv=[b"/bin/sh", b"./run.sh", b"x"])  # fmt: skip
    event = event_for(bus.Message(bus.TOPIC_PROC, env, b""), ("sched_process_exec",))
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
    env = proc_env(path=b"/usr/bin/true", cmdpath=b"/usr/bin/true")
    args = _args(event_for(bus.Message(bus.TOPIC_PROC, env, b""), ()))
    assert (args["cmdpath"], args["interp"], args["interpreter_pathname"]) == (
        "/usr/bin/true",
        "/usr/bin/true",
        "",
    )
    assert args["interpreter_inode"] == 0
