"""The sha256 of an artifact as it is on disk, read back through its fd.

Hashing what was written (not what was received) is what makes an index line trustworthy:
a short write or a hole shows in the digest the analyst will compare against.
"""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 20


def sha256_of_fd(fd: int) -> tuple[int, str]:
    """(bytes read, hex sha256) of the whole file behind ``fd``, from offset 0."""
    digest = hashlib.sha256()
    pos = 0
    while chunk := os.pread(fd, BLOCK, pos):
        digest.update(chunk)
        pos += len(chunk)
    return pos, digest.hexdigest()
