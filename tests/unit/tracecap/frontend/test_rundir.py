"""The directories `tracecap run` prepares for the writers."""

import shutil
import tempfile
from pathlib import Path

from tracecap.frontend.rundir import unreachable_parent


def test_unreachable_parent_names_the_directory_that_blocks():
    base = Path(tempfile.mkdtemp(prefix="tc-reach-", dir="/tmp"))  # pytest's tmp is 0700
    try:
        base.chmod(0o755)
        closed = base / "closed"
        (closed / "dir").mkdir(parents=True)
        closed.chmod(0o700)
        nobody = 65534
        assert unreachable_parent(str(closed / "dir" / "out"), nobody, {nobody}) == str(closed)
        closed.chmod(0o711)
        assert unreachable_parent(str(closed / "dir" / "out"), nobody, {nobody}) is None
    finally:
        shutil.rmtree(base)
