"""Temporaries of atomic writes (``.{name}.tmp-{pid}[suffix]`` beside the output) left by a job that died.

A job killed with SIGKILL, or by the OOM killer, never reaches the clean-up of its temporary; the next job that
writes the same output removes every temporary of that output whose process is gone. Snakemake runs one job per
output at a time, so a temporary of another live process is never touched (a pid reused by an unrelated process
only leaves the temporary for a later run).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` (files or folders) whose writing process is no longer alive; returns
    what was removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+)(?:\..*)?")
    removed = []
    try:
        found = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for item in found:
        match = pattern.fullmatch(item.name)
        if match is None or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        stale = Path(item.path)
        if item.is_dir(follow_symlinks=False):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed
