"""Atomic file writes: a kill or a full disk never leaves a half-written file under its name.

The content goes to `<name>.tmp<pid>` beside the target, is flushed to disk, then renamed over
the target, so readers see the old file or the new one. A failed write removes its temporary
file; `remove_stale_temporaries` removes those of processes that were killed while writing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)
TEMPORARY = re.compile(r"\.tmp(\d+)$")


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """`write(file)` fills the temporary file; then it is synced and renamed to `path`.
    Any error propagates after the temporary file is removed."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(root: Path) -> None:
    """Delete the `*.tmp<pid>` files in `root` whose writing process no longer runs."""
    try:
        candidates = [path for path in root.iterdir() if TEMPORARY.search(path.name)]
    except OSError:  # no folder yet (or not a folder: the first write says so)
        return
    for path in candidates:
        if not _process_alive(int(TEMPORARY.search(path.name).group(1))):
            log.info("removing %s, left by a run that was stopped while writing", path)
            path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
