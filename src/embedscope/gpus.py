"""Which GPU a job uses: Snakemake schedules GPU jobs by a count (`gpu=1`) but assigns no device ids.

- Under SLURM (``SLURM_JOB_ID`` set) with ``CUDA_VISIBLE_DEVICES`` already set, SLURM has bound the job to its
  GPUs: use them as they are.
- Otherwise (a workstation with several GPUs, ``snakemake --resources gpu=4``) a job that asks for ``n`` GPUs
  takes an exclusive ``fcntl.flock`` on one lock file per device for ``n`` free devices, and sets
  ``CUDA_VISIBLE_DEVICES`` to them before torch initialises CUDA. A device's lock file is named by its UUID when
  ``nvidia-smi -L`` tells it (``<lock folder>/GPU-<uuid>.lock``), so a card named by index in one job and by UUID
  in another is still one lock; else by the id (``gpu<id>.lock``). The locks are held by open file descriptors
  for the life of the job's process and vanish with it (also on a crash). A job takes all its ``n`` devices at
  once or none (no hold-and-wait: two multi-GPU jobs can never each hold half of what the other waits for); when
  too few are free it waits, at most ``timeout`` seconds, then fails naming the holders.
- No GPU (or a job that asks for none): nothing happens.

The lock folder is ``$EMBEDSCOPE_GPU_LOCKS`` if set, else ``results/.gpu_locks`` under the job's working
directory (the workflow's directory), so two runs in the same folder share devices politely. The locks must be
on a local file system shared by the jobs of one machine.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
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


def _nvidia_smi_list() -> str:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def count_devices() -> int:
    """NVIDIA GPUs on this machine, counted without initialising CUDA (which would freeze the device list)."""
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return sum(1 for _ in proc.iterdir())
    return len(parse_device_uuids(_nvidia_smi_list()))


_GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[0-9A-Fa-f-]+)\)")


def parse_device_uuids(listing: str) -> dict[str, str]:
    """Device index -> UUID from ``nvidia-smi -L`` output (``GPU 0: NVIDIA H200 (UUID: GPU-5f1c...)``)."""
    found = (_GPU_LINE.match(line.strip()) for line in listing.splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def lock_name(device: str, uuids: dict[str, str]) -> str:
    """The lock file of a CUDA_VISIBLE_DEVICES entry: by UUID when known (index or UUID alike), else by id."""
    key = uuids.get(device, device)
    return f"{key}.lock" if key.startswith(("GPU-", "MIG-")) else f"gpu{key}.lock"


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


def _try_lock(path: Path):
    handle = open(path, "a+")  # noqa: SIM115 - held open on purpose
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


def _holders(root: Path, devices, uuids) -> str:
    """'device: pid N' of each lock file, for the timeout message."""
    parts = []
    for device in devices:
        path = root / lock_name(device, uuids)
        text = path.read_text().strip() if path.is_file() else ""
        parts.append(f"{device}: {text or 'free'}")
    return ", ".join(parts)


def _lock_all(root: Path, devices, n: int, uuids) -> list[str] | None:
    """Lock ``n`` free devices in one attempt, or none: what this attempt took is released when short."""
    taken = []
    for device in devices:
        if len(taken) == n:
            break
        handle = _try_lock(root / lock_name(device, uuids))
        if handle is not None:
            _held[device] = handle
            taken.append(device)
    if len(taken) < n:
        release_gpus(taken)
        return None
    return taken


def acquire_gpu(
    n: int = 1,
    *,
    environ=None,
    n_devices: int | None = None,
    uuids: dict[str, str] | None = None,
    folder: str | os.PathLike | None = None,
    poll_seconds: float = 2.0,
    timeout: float | None = None,
) -> str | None:
    """Give this process ``n`` GPUs of its own; returns the CUDA_VISIBLE_DEVICES it set (None: nothing done).

    Call it before anything initialises CUDA (``torch.cuda.is_available()`` does). ``environ`` (default
    ``os.environ``, which is updated), ``n_devices`` and ``uuids`` (default: asked of the driver) and ``folder``
    are for tests. ``timeout`` (seconds, None = wait for ever) bounds the wait for free devices; then
    TimeoutError naming the devices' holders.
    """
    environ = os.environ if environ is None else environ
    n = int(n or 0)
    if n <= 0:
        return None
    if "SLURM_JOB_ID" in environ and "CUDA_VISIBLE_DEVICES" in environ:
        log.info("SLURM job %s: using CUDA_VISIBLE_DEVICES=%s as set by SLURM", environ["SLURM_JOB_ID"],
                 environ["CUDA_VISIBLE_DEVICES"])
        return environ["CUDA_VISIBLE_DEVICES"]
    devices = candidate_devices(environ, n_devices)
    if not devices:
        log.info("no GPU visible; nothing to lock")
        return None
    if n > len(devices):
        raise RuntimeError(f"the job asks for gpu={n} but this machine shows {len(devices)} GPU(s): {devices}")
    chosen = [d for d in devices if d in _held][:n]
    if len(chosen) < n:
        uuids = parse_device_uuids(_nvidia_smi_list()) if uuids is None else uuids
        root = Path(folder) if folder is not None else lock_dir(environ)
        root.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        next_note = start
        while (chosen := _lock_all(root, devices, n, uuids)) is None:
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                raise TimeoutError(
                    f"no {n} free GPU(s) among {devices} after {now - start:.0f} s (locks in {root}; "
                    f"{_holders(root, devices, uuids)}): other jobs hold them. Wait for them, or raise the "
                    "config key gpu_lock_timeout")
            if now >= next_note:  # say so at once, then every ten minutes
                log.info("GPUs %s are taken by other jobs (%s); waiting", devices, _holders(root, devices, uuids))
                next_note = now + 600
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


def slurm_gpus(environ=None) -> int:
    """GPUs SLURM allocated to this job (``SLURM_GPUS_ON_NODE``, else ``SLURM_JOB_GPUS``); 0 outside SLURM."""
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in environ:
        return 0
    on_node = environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if on_node.isdigit():
        return int(on_node)
    return len([g for g in environ.get("SLURM_JOB_GPUS", "").split(",") if g.strip()])
