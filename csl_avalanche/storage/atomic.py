"""Atomic file writes: a kill or a full disk never leaves a half-written file under its name.

The content goes to `<name>.tmp<pid>@<host>` beside the target, is flushed to disk, then renamed
over the target, so readers see the old file or the new one. A failed write removes its
temporary file; `remove_stale_temporaries` removes those of processes of this machine that were
killed while writing. A folder shared between machines (NFS) keeps the temporary files of the
other machines' writers: a process id says nothing about another machine, and removing a live
writer's file would break its write.
`save_in_place` writes a torch.save file whose large tensors are filled through a memory map,
part by part, so that no such tensor is ever whole in memory. `unwritable_because` says why a
write failed in the words of its fix: a full disk, or a folder this process may not write in.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
import re
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.utils.serialization

from csl_avalanche.core.errors import reason

log = logging.getLogger(__name__)
# `.tmp<pid>@<host>`; a name without `@<host>` is an older version's, written on this machine.
TEMPORARY = re.compile(r"\.tmp(?P<pid>\d+)(@(?P<host>[^/]+))?$")


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """`write(file)` fills the temporary file; then it is synced and renamed to `path`.
    Any error propagates after the temporary file is removed."""
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)


def unwritable_because(err: BaseException, path: Path) -> str:
    """Why writing `path` failed, with what to do about it, for a one-line error: its disk is
    full (free space), the process may not write in its folder (permission), or the OS's own
    reason."""
    code = getattr(err, "errno", None)
    if code in FULL_DISK:
        return f"{reason(err)}: free space on the disk of {path.parent}"
    if code in NOT_ALLOWED:
        return f"no permission to write in {path.parent} ({reason(err)}): make it writable"
    return f"{reason(err)}: check that the disk of {path.parent} has space and can be written"


@dataclass(frozen=True)
class Blank:
    """A tensor of zeros of this shape and dtype, to be filled in place (`save_in_place`)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def save_in_place(path: Path, payload: Any, fill: Callable[[Any], None]) -> None:
    """torch.save `payload`, whose `Blank`s become tensors of zeros, then `fill(loaded)`: the
    saved payload, memory-mapped and writable, whose writes go to the file.

    The zeros come from sparse scratch files (no memory, no disk) and are written once; the
    fill then writes each tensor a part at a time (a teacher, a chunk of rows), so the file may
    be far larger than memory. Atomic like `write_atomically`: an error in the fill too leaves
    no file. Errors of writing are OSErrors; the fill's own errors propagate as they are. The
    file holds no CRC-32 checksums (the fill would invalidate them); torch does not check them
    when loading.
    """
    tmp = temporary(path)
    try:
        zeros = _zeros_for(payload, path.parent)
        try:
            with torch.utils.serialization.config.patch({"save.compute_crc32": False}):
                torch.save(zeros, tmp)
        except RuntimeError as err:  # how torch.save reports a full disk
            raise OSError(str(err)) from err
        del zeros
        with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
            mapped = torch.load(tmp, map_location="cpu", mmap=True, weights_only=True)
        fill(mapped)
        del mapped  # unmaps the file: every write is in it
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _zeros_for(value: Any, folder: Path) -> Any:
    """`value` with every Blank replaced by zeros: a memory map of a sparse file, whose pages
    the kernel reads as zeros without storing them (the file is deleted at once)."""
    if isinstance(value, Blank):
        numel = math.prod(value.shape)
        if numel == 0:
            return torch.zeros(value.shape, dtype=value.dtype)
        handle, name = tempfile.mkstemp(dir=folder, prefix=".blank")
        try:
            os.ftruncate(handle, numel * value.dtype.itemsize)
            zeros = torch.from_file(name, shared=False, size=numel, dtype=value.dtype)
        finally:
            os.close(handle)
            os.unlink(name)
        return zeros.view(value.shape)
    if isinstance(value, Mapping):
        return {key: _zeros_for(item, folder) for key, item in value.items()}
    return value


def temporary(path: Path) -> Path:
    """Where this process writes `path` before renaming it: `<name>.tmp<pid>@<host>`."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}@{socket.gethostname()}")


def remove_stale_temporaries(root: Path) -> None:
    """Delete the temporary files in `root` whose writing process, on this machine, no longer
    runs (those of other machines are left to them)."""
    try:
        candidates = [(path, TEMPORARY.search(path.name)) for path in root.iterdir()]
    except OSError:  # no folder yet (or not a folder: the first write says so)
        return
    host = socket.gethostname()
    for path, match in candidates:
        if match is None or match["host"] not in (None, host):
            continue
        if not _process_alive(int(match["pid"])):
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
