"""--output json:/path: root writes the events file only where nobody else can redirect it."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from tracecap.frontend.events_file import EventsFileError, open_events_file
from tracecap.rotation import Rotation


def test_events_go_to_the_file_and_rotate(tmp_path: Path):
    path = tmp_path / "new" / "events.json"  # a missing directory is created, 0750
    f = open_events_file(str(path), Rotation(2048, None, True))
    lines = [b'{"eventName": "vfs_write", "n": %d}\n' % n for n in range(300)]
    for line in lines:
        f.write(line)
    f.close()
    assert (path.parent.stat().st_mode & 0o777) == 0o750
    assert (path.stat().st_mode & 0o777) == 0o640
    segs = sorted(p.name for p in path.parent.iterdir() if p.name != "events.json")
    assert segs and all(s.startswith("events.") and s.endswith(".json.gz") for s in segs)
    data = b"".join(gzip.decompress((path.parent / s).read_bytes()) for s in segs)
    assert data + path.read_bytes() == b"".join(lines)


def test_an_existing_file_is_appended_to(tmp_path: Path):
    path = tmp_path / "e.json"
    path.write_bytes(b"before\n")
    f = open_events_file(str(path), None)
    f.write(b"after\n")
    f.close()
    assert path.read_bytes() == b"before\nafter\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another user")
def test_a_file_someone_else_planted_is_refused(tmp_path: Path):
    path = tmp_path / "e.json"
    path.write_bytes(b"")
    os.chown(path, 65534, 65534)
    with pytest.raises(EventsFileError, match="owned by uid 65534"):
        open_events_file(str(path), None)


def test_a_link_is_never_followed(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep\n")
    (tmp_path / "e.json").symlink_to(victim)
    with pytest.raises(EventsFileError):
        open_events_file(str(tmp_path / "e.json"), None)
    os.link(victim, tmp_path / "h.json")
    with pytest.raises(EventsFileError, match="hard links"):
        open_events_file(str(tmp_path / "h.json"), None)
    (tmp_path / "d").symlink_to(tmp_path)
    with pytest.raises(EventsFileError, match="symlink"):
        open_events_file(str(tmp_path / "d" / "e2.json"), None)
    assert victim.read_bytes() == b"keep\n"


def test_a_directory_others_can_write_is_refused(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(EventsFileError, match="writable by every user"):
        open_events_file(str(shared / "e.json"), None)
    shared.chmod(0o1777)  # sticky, as /tmp: others cannot rename or remove root's entries
    open_events_file(str(shared / "e.json"), None).close()
