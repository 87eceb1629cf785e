"""What every job does at start and exit: the job-summary line with the true peak memory and the declared limits."""

import re
import subprocess
import sys
import textwrap

JOB = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace
    import numpy as np
    from embedscope import runtime
    job = SimpleNamespace(params=SimpleNamespace(), config={"seed": 0}, threads=1, rule="hungry",
                          resources=SimpleNamespace(mem_mb=int(sys.argv[1]), runtime=5))
    runtime.start_job(job)
    block = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MiB touched, then freed before exit
    del block
    """
)


def run_job(mem_mb: int) -> str:
    out = subprocess.run([sys.executable, "-c", JOB, str(mem_mb)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "job summary:" in line]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_job_summary_reports_the_high_water_mark_not_the_memory_at_exit():
    line = run_job(mem_mb=100)
    peak = float(re.search(r"peak_rss_mb=(\d+)", line).group(1))
    assert peak >= 300  # the 300 MiB block was freed before exit; the high-water mark still holds it
    assert "rule=hungry" in line and "mem_mb=100 runtime_min=5" in line
    assert " WARNING " in line  # more than declared: a cluster enforcing --mem would kill this job


def test_job_within_its_declaration_is_not_flagged():
    line = run_job(mem_mb=100_000)
    assert " INFO " in line and " WARNING " not in line


def test_compute_environment_says_where_a_cpu_result_was_made():
    import torch

    from embedscope.runtime import compute_environment

    env = compute_environment("cpu", "fp32")
    assert env["device"] == "cpu" and env["precision"] == "fp32" and env["torch"] == torch.__version__
    assert env["cuda"] is env["cudnn"] is env["tf32_matmul"] is env["cudnn_benchmark"] is None  # no CUDA involved
    assert env["threads"] == torch.get_num_threads() and isinstance(env["device_name"], str) and env["device_name"]
    assert set(env) == {"device", "device_name", "precision", "torch", "cuda", "cudnn", "tf32_matmul", "tf32_cudnn",
                        "cudnn_benchmark", "cudnn_deterministic", "deterministic_algorithms", "threads"}


def test_the_heap_threshold_is_fixed_on_glibc():
    # Debian (CI) and these machines run glibc: mallopt accepts the fixed threshold
    from embedscope.runtime import fix_heap_growth

    assert fix_heap_growth() is True


def test_computed_on_is_one_line_for_figures():
    from embedscope.runtime import computed_on

    cpu = {"device": "cpu", "device_name": "x86_64", "precision": "fp32", "torch": "2.5.1", "cuda": None,
           "tf32_matmul": None, "tf32_cudnn": None}
    assert computed_on(cpu) == "computed on cpu (x86_64), fp32, torch 2.5.1"
    gpu = {**cpu, "device": "cuda", "device_name": "NVIDIA H200", "precision": "bf16 autocast", "cuda": "12.4",
           "tf32_matmul": True}
    assert computed_on(gpu) == "computed on cuda (NVIDIA H200), bf16 autocast (TF32 allowed), torch 2.5.1, CUDA 12.4"
    assert computed_on(None) is None and computed_on({}) is None  # a store written before the record was kept
