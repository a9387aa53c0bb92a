"""collector/module_images.py: which bytes of an init_module image its mapped file can give."""

from __future__ import annotations

import pytest

from bpf.records import ModuleMapping
from collector.module_images import (
    PAGE_SIZE,
    WRITTEN_PRIVATE,
    file_candidates,
    fill_plan,
    why_not_from_file,
)

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
