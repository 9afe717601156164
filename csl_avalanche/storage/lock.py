"""One process at a time: an exclusive OS lock (`fcntl.flock`) on a file.

The kernel drops the lock when its holder's file is closed or the holder ends, however it ends
(SIGKILL included), so a dead process never leaves a stale lock behind and nothing has to be
cleaned up. The file also holds its holder's `pid@host`, so that a process refused the lock can
say who holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import TextIO


def take_lock(path: Path) -> TextIO | None:
    """Take the lock of the file `path` (created if need be) without waiting, and write this
    process's `pid@host` into it: the open file, which holds the lock until it is closed; None
    when another process holds it. Errors of opening the file (an unwritable folder) propagate
    as OSErrors."""
    file = open(path, "a+")  # noqa: SIM115 - the open file is the lock: the caller closes it
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        return None
    except BaseException:
        file.close()
        raise
    file.truncate(0)
    file.write(f"{os.getpid()}@{socket.gethostname()}\n")
    file.flush()
    return file


def lock_holder(path: Path) -> str:
    """The `pid@host` that the holder of the lock of `path` wrote ("" when unknown: it has not
    written it yet, or the file cannot be read)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""
