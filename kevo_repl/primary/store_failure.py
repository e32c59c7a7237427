"""Why the primary's store could not apply: the real cause, also when the store hides it.

LMDB and LevelDB may report a full disk as "Input/output error"; a free-space check on the
data directory names the cause an operator can act on."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

#: below this many free bytes on the data directory's file system, a store failure is
#: reported as a full disk
LOW_SPACE_BYTES = 16 * 1024 * 1024


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def describe(exc: BaseException, data_dir: Path) -> str:
    """The cause of a failed store apply, for logs, status and write refusals."""
    free = free_bytes(data_dir)
    full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    if full or (free is not None and free < LOW_SPACE_BYTES):
        shown = "" if free is None else f", {free} bytes free on {data_dir}"
        return f"{os.strerror(errno.ENOSPC)} ({exc}{shown})"
    return str(exc) or type(exc).__name__
