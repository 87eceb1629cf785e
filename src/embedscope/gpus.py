"""Which GPU a job uses: Snakemake schedules GPU jobs by a count (`gpu=1`) but assigns no device ids.

- Under SLURM (``SLURM_JOB_ID`` set) with ``CUDA_VISIBLE_DEVICES`` already set, SLURM has bound the job to its
  GPUs: use them as they are.
- Otherwise (a workstation with several GPUs, ``snakemake --resources gpu=4``) a job that asks for ``n`` GPUs
  takes an exclusive ``fcntl.flock`` on one lock file per device (``<lock folder>/gpu<id>.lock``) for ``n`` free
  devices, and sets ``CUDA_VISIBLE_DEVICES`` to them before torch initialises CUDA. The locks are held by open
  file descriptors for the life of the job's process and vanish with it (also on a crash). When every device is
  taken the job waits for one to become free.
- No GPU (or a job that asks for none): nothing happens.

The lock folder is ``$EMBEDSCOPE_GPU_LOCKS`` if set, else ``results/.gpu_locks`` under the job's working
directory (the workflow's directory), so two runs in the same folder share devices politely. The locks must be
on a local file system shared by the jobs of one machine.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path

log = logging.getLogger("embedscope.gpus")

LOCK_ENV = "EMBEDSCOPE_GPU_LOCKS"
DEFAULT_LOCK_DIR = "results/.gpu_locks"

# Open lock files of this process, device id -> file object; kept alive for the job's life.
_held: dict[str, object] = {}


def _parse_visible(value: str) -> list[str]:
    """Device ids in a CUDA_VISIBLE_DEVICES value ('' or '-1' or 'NoDevFiles' = none)."""
    ids = [part.strip() for part in value.split(",") if part.strip()]
    valid = []
    for part in ids:
        if part.startswith("-") or part.lower() == "nodevfiles":
            break  # CUDA stops at the first invalid entry
        valid.append(part)
    return valid


def count_devices() -> int:
    """NVIDIA GPUs on this machine, counted without initialising CUDA (which would freeze the device list)."""
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def candidate_devices(environ=None, n_devices: int | None = None) -> list[str]:
    """Device ids a job may choose from: those in CUDA_VISIBLE_DEVICES if set, else 0..n-1."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return _parse_visible(environ["CUDA_VISIBLE_DEVICES"])
    n = count_devices() if n_devices is None else n_devices
    return [str(i) for i in range(n)]


def lock_dir(environ=None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(LOCK_ENV) or DEFAULT_LOCK_DIR)


def _try_lock(folder: Path, device: str):
    handle = open(folder / f"gpu{device}.lock", "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def acquire_gpu(
    n: int = 1,
    *,
    environ=None,
    n_devices: int | None = None,
    folder: str | os.PathLike | None = None,
    poll_seconds: float = 2.0,
    timeout: float | None = None,
) -> str | None:
    """Give this process ``n`` GPUs of its own; returns the CUDA_VISIBLE_DEVICES it set (None: nothing done).

    Call it before anything initialises CUDA (``torch.cuda.is_available()`` does). ``environ`` (default
    ``os.environ``, which is updated), ``n_devices`` (default: counted) and ``folder`` are for tests.
    ``timeout`` (seconds, None = wait for ever) bounds the wait for a free device; then TimeoutError.
    """
    environ = os.environ if environ is None else environ
    n = int(n or 0)
    if n <= 0:
        return None
    if "SLURM_JOB_ID" in environ and "CUDA_VISIBLE_DEVICES" in environ:
        log.info(
            "SLURM job %s: using CUDA_VISIBLE_DEVICES=%s as set by SLURM",
            environ["SLURM_JOB_ID"],
            environ["CUDA_VISIBLE_DEVICES"],
        )
        return environ["CUDA_VISIBLE_DEVICES"]
    devices = candidate_devices(environ, n_devices)
    if not devices:
        log.info("no GPU visible; nothing to lock")
        return None
    if n > len(devices):
        raise RuntimeError(f"the job asks for gpu={n} but this machine shows {len(devices)} GPU(s): {devices}")
    already = [d for d in devices if d in _held]
    if len(already) >= n:
        chosen = already[:n]
    else:
        root = Path(folder) if folder is not None else lock_dir(environ)
        root.mkdir(parents=True, exist_ok=True)
        chosen = list(already)
        start = time.monotonic()
        warned = False
        while True:
            for device in devices:
                if len(chosen) == n:
                    break
                if device in chosen:
                    continue
                handle = _try_lock(root, device)
                if handle is not None:
                    _held[device] = handle
                    chosen.append(device)
            if len(chosen) == n:
                break
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                release_gpus([d for d in chosen if d not in already])
                raise TimeoutError(f"no free GPU among {devices} after {waited:.0f} s (locks in {root})")
            if not warned:
                log.info("all GPUs %s are taken by other jobs (locks in %s); waiting", devices, root)
                warned = True
            time.sleep(poll_seconds)
    value = ",".join(chosen)
    environ["CUDA_VISIBLE_DEVICES"] = value
    log.info("using GPU(s) CUDA_VISIBLE_DEVICES=%s", value)
    return value


def release_gpus(devices=None) -> None:
    """Drop this process's locks (all, or the given device ids). Exiting the process does the same."""
    for device in list(_held if devices is None else devices):
        handle = _held.pop(device, None)
        if handle is not None:
            handle.close()


def job_gpus(snakemake) -> int:
    """The `gpu` resource of a Snakemake job (0 when it asks for none)."""
    resources = getattr(snakemake, "resources", None)
    try:
        return int(getattr(resources, "gpu", 0) or 0)
    except (TypeError, ValueError):
        return 0
