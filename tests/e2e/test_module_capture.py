"""Kernel module images from real loaders: kmod's insmod and modprobe on real Debian modules.

The modules come from Debian's kernel package (scripts/setup-test.sh puts them in
MODULE_CACHE). Loads fail here (no module support: ENOSYS), and kmod answers a failed
finit_module with init_module on an mmap of the .ko that it never touched: the collector
reads those pages from the file. A .ko.xz is decompressed by kmod into its heap and passed to
init_module alone.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import filesystems
from tests.support.pipeline import kernel_dev
from tests.support.workloads import python

pytestmark = pytest.mark.ebpf

MODULE_CACHE = Path("/var/cache/tracecap-test/modules")
ENOSYS = -38
PAGE = 4096
#: What the collector says when a written private mapping stands between it and the file
#: (collector/module_images.py WRITTEN_PRIVATE).
WRITTEN_PRIVATE = "private file mapping that was written to"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def modules(workdir: Path) -> dict[str, Path]:
    """The test's own copies of the real modules (wp512: 9 pages, crc7: 2 pages)."""
    if not (MODULE_CACHE / "version").exists():
        pytest.fail(f"{MODULE_CACHE} holds no modules: run `make setup-test`")
    return {name: Path(shutil.copy(MODULE_CACHE / f"{name}.ko", workdir)) for name in
            ("wp512", "crc7")}  # fmt: skip


def load(*argv: str | Path) -> None:
    """Run a real kmod loader; the load fails here, as it must without module support."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Function not implemented" in done.stderr, done


def attempts(run, data: bytes) -> list[dict]:
    """The index records of the load attempts of the image ``data``, in index order."""
    return [r for r in run.records("module") if r["sha256"] == sha(data)]


def check_stored_once(run, records: list[dict], data: bytes) -> dict:
    """One attempt stored the image, whole and named after its true sha256; every other is
    recorded and points at it. Returns the stored one's record."""
    stored = [r for r in records if r["path"] is not None]
    assert len(stored) == 1, records
    (first,) = stored
    assert first["complete"] is True and first["missing"] == []
    assert first["path"].endswith("." + sha(data))
    assert (run.out_dir / first["path"]).read_bytes() == data
    for r in records:
        assert r["complete"] is True, r
        if r is not first:
            assert (r["path"], r["duplicate_of"]) == (None, first["path"])
    return first


def check_kmod_pair(run, records: list[dict], ko: Path, params: str) -> None:
    """kmod's two attempts for one .ko: finit_module from the file, then init_module from the
    untouched mapping of it, whose every byte came from the file (the kernel read none)."""
    data = ko.read_bytes()
    check_stored_once(run, records, data)
    by_syscall = {r["syscall"]: r for r in records}
    assert sorted(by_syscall) == ["finit_module", "init_module"], records
    finit, init = by_syscall["finit_module"], by_syscall["init_module"]
    assert finit["pid"] == init["pid"] and finit["comm"] == init["comm"]
    st = ko.stat()
    assert (finit["dev"], finit["inode"]) == (kernel_dev(st.st_dev), st.st_ino)
    assert finit["source_path"] == str(ko)
    for r in (finit, init):
        assert (r["ret"], r["params"]) == (ENOSYS, params)
    assert init["from_file"] == [[0, len(data)]]
    mapping = init["mapping"]
    assert (mapping["inode"], mapping["size"], mapping["path"]) == (st.st_ino, len(data), str(ko))
    assert (mapping["shared"], mapping["written"], mapping["pgoff"]) == (False, False, 0)
    assert init["addr"] == mapping["start"] and "fill_error" not in init


def test_insmod_of_real_modules_captures_each_image_whole_and_every_attempt(
    tracecap, modules: dict[str, Path]
):
    run = tracecap("--capture", "module")
    load("insmod", modules["wp512"], "answer=42")
    load("insmod", modules["crc7"])
    run.stop()
    wp512 = attempts(run, modules["wp512"].read_bytes())
    crc7 = attempts(run, modules["crc7"].read_bytes())
    check_kmod_pair(run, wp512, modules["wp512"], "answer=42")
    check_kmod_pair(run, crc7, modules["crc7"], "")
    # two modules, two names: none is named after what was not captured
    assert len(run.records("module")) == 4
    names = {r["path"] for r in run.records("module") if r["path"]}
    assert len(names) == 2 and not any(n.endswith(".partial") for n in names)


def test_modprobe_from_a_private_module_tree(tracecap, modules: dict[str, Path], workdir: Path):
    version = (MODULE_CACHE / "version").read_text().strip()
    tree = workdir / "tree"
    ko = tree / "lib/modules" / version / "kernel/crypto/wp512.ko"
    ko.parent.mkdir(parents=True)
    shutil.copy(modules["wp512"], ko)
    subprocess.run(["depmod", "-b", tree, version], check=True, capture_output=True)
    run = tracecap("--capture", "module")
    load("modprobe", "-d", tree, "-S", version, "wp512", "answer=7")
    run.stop()
    check_kmod_pair(run, attempts(run, ko.read_bytes()), ko, "answer=7")


def test_insmod_of_a_ko_xz_captures_the_decompressed_image(tracecap, modules: dict[str, Path]):
    ko = modules["wp512"]
    packed = ko.with_suffix(".ko.xz")
    subprocess.run(["xz", "-k", ko], check=True)
    assert packed.read_bytes()[:6] == b"\xfd7zXZ\x00"
    run = tracecap("--capture", "module")
    load("insmod", packed)
    run.stop()
    data = ko.read_bytes()
    (record,) = attempts(run, data)  # kmod 30 decompresses and calls init_module only
    check_stored_once(run, [record], data)
    assert record["syscall"] == "init_module" and record["ret"] == ENOSYS
    assert record["path"] == f"host/module.pid-{record['pid']}.{sha(data)}"
    assert "mapping" not in record and "from_file" not in record  # the heap: the kernel read it


MAPPED_LOADER = """
    import ctypes, os, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.syscall.restype = ctypes.c_long
    PROT_READ, PROT_WRITE, MAP_PRIVATE = 1, 2, 2
    def mapped(path, prot):
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        addr = libc.mmap(None, size, prot, MAP_PRIVATE, fd, 0)
        os.close(fd)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        return addr, size
    def init_module(addr, size, params):
        assert libc.syscall(175, ctypes.c_void_p(addr), ctypes.c_ulong(size),
                            ctypes.c_char_p(params)) == -1
"""


def test_a_deleted_module_file_is_read_through_the_loaders_mapping(
    tracecap, modules: dict[str, Path]
):
    """The path names nothing any more; /proc/PID/map_files still reaches the file while the
    loader holds its mapping."""
    ko = modules["crc7"]
    data = ko.read_bytes()
    run = tracecap("--capture", "module")
    python(MAPPED_LOADER + f"""
    addr, size = mapped({str(ko)!r}, PROT_READ)
    os.unlink({str(ko)!r})
    init_module(addr, size, b"")
    time.sleep(3)  # the mapping stays while the collector reads
    """)  # fmt: skip
    run.stop()
    (record,) = attempts(run, data)
    check_stored_once(run, [record], data)
    assert record["from_file"] == [[0, len(data)]]
    assert record["mapping"]["path"].startswith(str(ko))


def test_an_image_that_cannot_be_read_whole_is_partial_by_name_and_index(
    tracecap, modules: dict[str, Path]
):
    """A private mapping written to: its unread pages may be copied-on-write ones swapped out,
    not the file's, so they are not taken from the file. The artifact holds what the kernel
    read, is named partial, and no hash of it stands for the module's."""
    ko = modules["wp512"]
    data = ko.read_bytes()
    run = tracecap("--capture", "module")
    python(MAPPED_LOADER + f"""
    addr, size = mapped({str(ko)!r}, PROT_READ | PROT_WRITE)
    ctypes.memmove(addr + 100, b"PATCHED", 7)  # only the first page is copied and resident
    init_module(addr, size, b"")
    """)  # fmt: skip
    run.stop()
    (record,) = run.records("module")
    assert record["complete"] is False and record["missing"] == [[PAGE, len(data)]]
    assert record["path"] == f"host/module.pid-{record['pid']}.ts-{record['ts']}.partial"
    assert WRITTEN_PRIVATE in record["fill_error"] and record["mapping"]["written"] is True
    stored = (run.out_dir / record["path"]).read_bytes()
    assert stored[:PAGE] == data[:100] + b"PATCHED" + data[107:PAGE]
    assert stored[PAGE:] == bytes(len(data) - PAGE)  # missing, as the index says
    assert record["sha256"] == sha(stored) != sha(data)


def check_loaded_from(run, ko: Path) -> None:
    """kmod's two attempts for a .ko on a file system of its own: both complete, the image
    stored once under its true sha256, init_module's unread mapping filled from the file."""
    data = ko.read_bytes()
    records = attempts(run, data)
    check_stored_once(run, records, data)
    by_syscall = {r["syscall"]: r for r in records}
    assert sorted(by_syscall) == ["finit_module", "init_module"], run.records("module")
    assert by_syscall["finit_module"]["source_path"] == str(ko)
    assert by_syscall["init_module"]["from_file"] == [[0, len(data)]]


def test_a_module_in_a_btrfs_subvolume_is_captured_whole(
    tracecap, modules: dict[str, Path], workdir: Path
):
    """stat reports the subvolume's anonymous device where the kernel names the superblock's:
    the file is recognised by inode and ctime (collector/object_files.is_same_file)."""
    with filesystems.btrfs_subvolume(workdir) as sub:
        ko = Path(shutil.copy(modules["crc7"], sub / "crc7.ko"))
        run = tracecap("--capture", "module")
        load("insmod", ko)
        run.stop()
        (finit,) = [r for r in run.records("module") if r["syscall"] == "finit_module"]
        assert finit["dev"] != kernel_dev(ko.stat().st_dev)  # what makes btrfs the case
        check_loaded_from(run, ko)


def test_modules_on_overlayfs_are_captured_whole(tracecap, modules: dict[str, Path], workdir: Path):
    """From the lower layer and from the upper one (a file made in the merged directory):
    init_module's mapping is of the layer's own file, finit_module's file the overlay's."""
    with filesystems.overlay(workdir, {"wp512.ko": modules["wp512"]}) as merged:
        lower = merged / "wp512.ko"
        upper = Path(shutil.copy(modules["crc7"], merged / "crc7.ko"))
        run = tracecap("--capture", "module")
        load("insmod", lower)
        load("insmod", upper)
        run.stop()
        check_loaded_from(run, lower)
        check_loaded_from(run, upper)
