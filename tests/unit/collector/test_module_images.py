"""collector/module_images.py: which bytes of an init_module image its mapped file can give, and
the kernel's images held until their load returns."""

from __future__ import annotations

import pytest

from bpf.records import ModuleMapping
from collector.envelopes import Outgoing
from collector.module_images import (
    CROWDED,
    HELD_MAX,
    PAGE_SIZE,
    STOPPED,
    UNRETURNED_RET,
    WRITTEN_PRIVATE,
    HeldImages,
    file_candidates,
    fill_plan,
    why_not_from_file,
)
from tracecap import bus

#: Mapped from the file's third page on; the image starts 0x10 into the mapping.
MAPPING = ModuleMapping(start=0x10000, end=0x14000, pgoff=2, shared=False, written=False)
ADDR = 0x10010


@pytest.mark.parametrize(
    ("lost", "plan", "rest"),
    [
        ([], [], []),
        ([[0, 16]], [(0, 16, 2 * PAGE_SIZE + 0x10)], []),
        ([[0, 16], [100, 200]], [(0, 16, 0x2010), (100, 200, 0x2074)], []),
        # the image runs past the mapping's end: that part is in no file the kernel named
        ([[0x3FF0 - 4, 0x3FF0 + 8]], [(0x3FEC, 0x3FF0, 0x6000 - 4)], [[0x3FF0, 0x3FF8]]),
        ([[0x4000, 0x5000]], [], [[0x4000, 0x5000]]),
    ],
)  # fmt: skip
def test_lost_ranges_map_to_file_offsets_within_the_mapping(lost, plan, rest) -> None:
    assert PAGE_SIZE == 0x1000  # the offsets above are x86-64's
    assert fill_plan(lost, ADDR, MAPPING) == (plan, rest)


def test_an_image_starting_before_the_mapping_keeps_that_part_lost() -> None:
    # bpf_find_vma only ever gives the mapping holding addr; the plan does not rely on it
    assert fill_plan([[0, 0x40]], MAPPING.start - 0x20, MAPPING) == (
        [(0x20, 0x40, 2 * PAGE_SIZE)],
        [[0, 0x20]],
    )


def test_only_an_unwritten_or_shared_mapping_is_the_file() -> None:
    assert why_not_from_file(MAPPING) == ""
    assert why_not_from_file(MAPPING._replace(shared=True)) == ""
    assert why_not_from_file(MAPPING._replace(written=True)) == WRITTEN_PRIVATE


def test_the_mapping_is_tried_before_the_path() -> None:
    assert file_candidates(7, MAPPING, b"/lib/m.ko") == [
        "/proc/7/map_files/10000-14000",
        "/lib/m.ko",
    ]
    assert file_candidates(7, MAPPING, b"m.ko") == ["/proc/7/map_files/10000-14000"]
    assert file_candidates(7, MAPPING, b"/proc/1/mem") == ["/proc/7/map_files/10000-14000"]


def test_the_file_the_loaders_finit_module_named_comes_last() -> None:
    """On overlayfs the mapping's own path is inside the layer's private mount (``/m.ko``)."""
    assert file_candidates(7, MAPPING, b"/m.ko", b"/merged/m.ko") == [
        "/proc/7/map_files/10000-14000",
        "/m.ko",
        "/merged/m.ko",
    ]
    assert file_candidates(7, MAPPING, b"/lib/m.ko", b"/lib/m.ko") == [
        "/proc/7/map_files/10000-14000",
        "/lib/m.ko",
    ]
    assert file_candidates(7, MAPPING, b"/m.ko", b"rel.ko") == [
        "/proc/7/map_files/10000-14000",
        "/m.ko",
    ]


# --- HeldImages: the kernel's image held until its load returns -----------------------------------


def _msg(obj_id: int, off: int, last: bool, topic: bytes = bus.TOPIC_MODULE) -> Outgoing:
    return Outgoing(topic, {"obj_id": obj_id, "obj_off": off, "last": last, "ret": 0}, b"x")


def test_held_messages_go_out_at_the_release_with_the_attempts_envelope():
    held = HeldImages()
    assert held.hold(1) == []
    other = _msg(2, 0, True)
    assert held.take([_msg(1, 0, False), other, _msg(1, 1, True)]) == [other]
    released = held.release(1, {"ret": -17, "source": "kernel_read_file"})
    assert [(m.env["obj_off"], m.env["last"], m.env["ret"]) for m in released] == [
        (0, False, -17),
        (1, True, -17),
    ]
    assert held.take([_msg(1, 2, True)])[0].env["ret"] == 0  # over: no longer changed


def test_messages_after_the_release_pass_with_its_envelope_until_the_last():
    held = HeldImages()
    held.hold(1)
    held.take([_msg(1, 0, False)])
    assert len(held.release(1, {"ret": 5})) == 1
    assert [m.env["ret"] for m in held.take([_msg(1, 1, False), _msg(1, 2, True)])] == [5, 5]
    assert held.take([_msg(1, 3, True)])[0].env["ret"] == 0


def test_only_module_messages_are_held():
    held = HeldImages()
    held.hold(1)
    exec_msg = _msg(1, 0, True, bus.TOPIC_EXEC)
    assert held.take([exec_msg]) == [exec_msg]


def test_an_unheld_image_is_not_released():
    assert HeldImages().release(9, {"ret": 0}) is None


def test_past_the_bound_the_oldest_goes_out_unreturned():
    held = HeldImages()
    for obj_id in range(HELD_MAX):
        assert held.hold(obj_id) == []
        held.take([_msg(obj_id, 0, True)])
    [out] = held.hold(HELD_MAX)
    assert (out.env["obj_id"], out.env["ret"], out.env["error"]) == (0, UNRETURNED_RET, CROWDED)
    assert UNRETURNED_RET == -115


def test_the_return_of_an_image_let_go_adds_no_second_record():
    held = HeldImages()
    for obj_id in range(HELD_MAX + 1):
        held.hold(obj_id)
        held.take([_msg(obj_id, 0, True)])
    assert held.late(0) and not held.late(1)
    assert held.release(0, {"ret": 0}) == []
    assert not held.late(0)
    assert held.release(0, {"ret": 0}) is None


def test_at_a_stop_every_held_image_goes_out_unreturned():
    held = HeldImages()
    held.hold(1)
    held.hold(2)
    held.take([_msg(1, 0, True)])
    [out] = held.release_all()
    assert (out.env["ret"], out.env["error"]) == (UNRETURNED_RET, STOPPED)
    # 2 had no message yet: the ones that come are still given the stop's envelope
    assert held.take([_msg(2, 0, True)])[0].env["error"] == STOPPED
    assert held.release_all() == []
