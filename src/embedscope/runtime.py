"""What every job does first: logging, seeds, threads, device, determinism."""

from __future__ import annotations

import atexit
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger("embedscope")


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr, which a workflow script has already pointed at ``snakemake.log[0]``."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def seed_everything(seed: int, deterministic: bool = True, device: str = "cpu") -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, ask torch for deterministic algorithms.

    On CUDA, ResNet-18's AdaptiveAvgPool2d backward has no deterministic kernel, so there the switch
    only warns; on CPU it is strict and two runs give identical numbers.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.startswith("cuda"))
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def cuda_report() -> str:
    """What torch sees of CUDA, for an error that must say why a GPU cannot be used."""
    import torch

    from embedscope.gpus import count_devices

    build = torch.version.cuda or "none (a CPU-only build of torch)"
    return (f"torch {torch.__version__}, CUDA build {build}, torch.cuda.is_available() = "
            f"{torch.cuda.is_available()}, torch.cuda.device_count() = {torch.cuda.device_count()}, "
            f"CUDA_VISIBLE_DEVICES = {os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, NVIDIA devices known to "
            f"the driver: {count_devices()}")


def resolve_device(requested: str, gpus_given: int = 0) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``.

    A job that asked for CUDA (``device: cuda``) or was given GPUs (the ``gpu`` resource, or a SLURM GPU
    allocation) and cannot use one fails at once, saying what torch sees: silently training on CPU instead
    would take hours of a GPU allocation. ``device: cpu`` with GPUs given runs on CPU, with a warning.
    """
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"config key 'device' is {requested!r}; expected auto, cpu or cuda")
    if requested == "cpu":
        if gpus_given:
            log.warning("this job was given %d GPU(s) but config key 'device' is 'cpu': running on CPU", gpus_given)
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise RuntimeError(f"config key 'device' is 'cuda' but torch sees no usable CUDA device: {cuda_report()}")
    if gpus_given:
        raise RuntimeError(f"this job was given {gpus_given} GPU(s) (the gpu resource or a SLURM allocation) but "
                           f"torch sees no usable CUDA device: {cuda_report()}. Set 'device: cpu' to run on CPU.")
    return "cpu"


def compute_environment(device: str, precision: str = "fp32") -> dict[str, object]:
    """Where and how a result was computed, for the attributes of every store and checkpoint torch writes:
    device (and its name), the precision of the pass that made the stored values, torch/CUDA/cuDNN versions,
    TF32 and cuDNN switches, deterministic algorithms and CPU threads. CPU and GPU results differ in their last
    bits; these attributes tell them apart."""
    import platform

    import torch

    cuda = device.startswith("cuda")
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
        "precision": precision,
        "torch": str(torch.__version__),  # a str subclass that weights_only=True refuses to unpickle
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None,
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic) if cuda else None,
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "threads": int(torch.get_num_threads()),
    }


def computed_on(env: Mapping[str, Any] | None) -> str | None:
    """One line for a figure or caption from :func:`compute_environment`'s record, e.g. ``computed on cpu
    (x86_64), fp32, torch 2.5.1``; None for a result that has no record (written before it was kept)."""
    if not env:
        return None
    line = f"computed on {env.get('device', '?')} ({env.get('device_name') or '?'}), {env.get('precision', '?')}"
    if env.get("tf32_matmul") or env.get("tf32_cudnn"):
        line += " (TF32 allowed)"
    line += f", torch {env.get('torch', '?')}"
    if env.get("cuda"):
        line += f", CUDA {env['cuda']}"
    return line


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


GPU_LOCK_TIMEOUT = 86400  # seconds a GPU job waits for a free device (config key gpu_lock_timeout)
JOB_SUMMARY = "job summary:"  # the prefix of the last line of every job's log (see log_job_summary)


def peak_rss_mb() -> tuple[float, float]:
    """(this process, its waited-for children): the kernel's high-water mark of resident memory, in MB.

    Snakemake's ``benchmark:`` samples RSS every few seconds and can miss a short peak; this cannot.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def log_job_summary(rule: str, started: float, mem_mb, runtime_min) -> None:
    """One line: wall time and true peak memory beside what the rule declared (mem_mb, runtime in minutes).

    A job that used more than it declared is flagged, since a cluster that enforces ``--mem`` kills it.
    """
    own, children = peak_rss_mb()
    wall = time.perf_counter() - started
    level = logging.INFO
    if (mem_mb and max(own, children) > float(mem_mb)) or (runtime_min and wall > 60 * float(runtime_min)):
        level = logging.WARNING
    log.log(level, "%s rule=%s wall_s=%.1f peak_rss_mb=%.0f children_peak_rss_mb=%.0f mem_mb=%s runtime_min=%s",
            JOB_SUMMARY, rule, wall, own, children, mem_mb, runtime_min)


# glibc serves an allocation from the heap below this size and maps it above; by default the threshold rises
# with every large buffer freed (up to 32 MB), so a job's batch-sized buffers end up in a heap that fragments and
# grows with the number of batches (an extraction's peak rose from 1.10 to 1.19 GB between 3,000 and 15,000
# images). Fixed at 1 MB, those buffers are mapped and unmapped whole and the peak stays flat (1.01 and 1.02 GB).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def fix_heap_growth() -> bool:
    """Fix glibc's mmap threshold (MMAP_THRESHOLD_BYTES) for this process; False where there is no glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def start_job(snakemake, seed: int | None = None, deterministic: bool | None = None) -> str:
    """Common start of a workflow script: logging, threads, seeds. Returns the resolved device.

    At exit the job logs its wall time and true peak memory against its declared resources (log_job_summary).

    Only a job whose stage module imported torch (the script imports it before calling this) pays for torch:
    threads, GPU choice, device and torch seeds. The ~50 t-SNE, figure and table jobs of a run skip the
    1-2 s of `import torch` each and seed only Python and NumPy.
    """
    setup_logging()
    fix_heap_growth()
    resources = getattr(snakemake, "resources", None)
    atexit.register(log_job_summary, str(snakemake.rule), time.perf_counter(),
                    getattr(resources, "mem_mb", None), getattr(resources, "runtime", None))
    params = snakemake.params
    config = snakemake.config
    threads = getattr(snakemake, "threads", 1)
    seed = config.get("seed", 0) if seed is None else seed
    deterministic = config.get("deterministic", True) if deterministic is None else deterministic
    if "torch" not in sys.modules:
        random.seed(int(seed))
        np.random.seed(int(seed))
        log.info("rule %s: threads=%s seed=%s (no torch)", snakemake.rule, threads, seed)
        return "cpu"
    set_threads(threads)
    requested = str(getattr(params, "device", None) or config.get("device", "auto"))
    from embedscope.gpus import acquire_gpu, job_gpus, slurm_gpus

    gpus_given = max(job_gpus(snakemake), slurm_gpus())
    if requested != "cpu":
        # A job with the `gpu` resource gets its own device(s) before torch initialises CUDA (embedscope.gpus).
        acquire_gpu(job_gpus(snakemake), timeout=config.get("gpu_lock_timeout", GPU_LOCK_TIMEOUT))
    device = resolve_device(requested, gpus_given)
    seed_everything(int(seed), bool(deterministic), device)
    log.info("rule %s: threads=%s device=%s seed=%s", snakemake.rule, threads, device, seed)
    return device


def progress(iterable=None, **kwargs):
    """tqdm into stderr (the rule's log), updating a few times a minute rather than every step."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("mininterval", 5.0)
    kwargs.setdefault("ascii", True)
    return tqdm(iterable, **kwargs)
