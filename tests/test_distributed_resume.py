"""Under torchrun (2 processes, gloo on CPU): a refused run says why once, and its run folder
belongs to one run at a time. torchrun itself exits 1 when a process fails (whatever that
process's exit code) and prints its own summary of the failure."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess

from test_distributed import torchrun


def the_one_error(proc: subprocess.CompletedProcess) -> str:
    """The run failed with one `error:` line, and no traceback of ours."""
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if "csl_avalanche" in line and "File" in line]
    assert ours == [], proc.stderr
    assert proc.stdout == ""
    return errors[0]


def test_a_refused_run_under_torchrun_prints_its_error_once(tmp_path):
    # Refused by the settings, before the processes join.
    error = the_one_error(
        torchrun(tmp_path / "run", "strategy.epochs=abc", cache_dir=tmp_path / "cache")
    )
    assert error == "error: strategy.epochs must be a whole number >= 1, got 'abc'"

    # Refused by rank 0 once they have joined: the run folder is in use.
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}@{socket.gethostname()}\n")
        held.flush()
        error = the_one_error(torchrun(run_dir, cache_dir=run_dir.parent / "cache"))
    assert f"{run_dir} is in use by another run (process {os.getpid()} on" in error
