"""User-facing errors: a wrong setting, missing data, an unusable weights file.

The command line prints such an error as its one-line message, without a traceback, because
the message already says what was expected, where, and how to fix it. Everything else (a bug)
keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn


class ConfigError(ValueError):
    """A problem the user fixes in the config or on disk; its message is the whole report."""


def refuse(err: ConfigError) -> NoReturn:
    """End the command with the error's one-line message and exit code 2 (no traceback)."""
    # One write of the whole line: under torchrun every rank reports, into one shared stderr.
    sys.stderr.write(f"error: {err}\n")
    sys.stderr.flush()
    raise SystemExit(2) from None


def reason(err: BaseException) -> str:
    """What went wrong in `err`, as one short line for a user-facing message: an OS error's
    text ("No space left on device"), else its type and first sentence."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    message = " ".join(str(err).split()).split(". ")[0]
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
