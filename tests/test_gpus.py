"""GPU device choice on a multi-GPU box (embedscope.gpus), with fake device counts: no GPU needed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from embedscope import gpus


@pytest.fixture(autouse=True)
def _release():
    yield
    gpus.release_gpus()


def test_no_gpu_does_nothing(tmp_path):
    env = {}
    assert gpus.acquire_gpu(1, environ=env, n_devices=0, folder=tmp_path) is None
    assert env == {}
    assert list(tmp_path.iterdir()) == []


def test_job_without_gpu_resource_does_nothing(tmp_path):
    env = {}
    assert gpus.acquire_gpu(0, environ=env, n_devices=4, folder=tmp_path) is None
    assert env == {} and list(tmp_path.iterdir()) == []


def test_slurm_devices_are_used_as_they_are(tmp_path):
    env = {"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "3"}
    assert gpus.acquire_gpu(1, environ=env, n_devices=8, folder=tmp_path) == "3"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert list(tmp_path.iterdir()) == []  # no locking under SLURM


def test_two_jobs_get_different_devices(tmp_path):
    # flock locks belong to the open file, so a second open() in the same process competes for a lock like
    # another process would; each "job" below hides the locks this process holds for the others
    jobs = []

    def job(**kwargs):
        held = dict(gpus._held)
        gpus._held.clear()
        try:
            env = {}
            return env, gpus.acquire_gpu(1, environ=env, n_devices=2, folder=tmp_path, **kwargs)
        finally:
            jobs.append(dict(gpus._held))
            gpus._held.clear()
            gpus._held.update(held)
            gpus._held.update(jobs[-1])

    first, device_a = job()
    second, device_b = job()
    assert (device_a, device_b) == ("0", "1")
    assert first["CUDA_VISIBLE_DEVICES"] == "0" and second["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(TimeoutError, match="no free GPU"):
        job(timeout=0.2, poll_seconds=0.05)
    gpus.release_gpus(["0"])
    assert job()[1] == "0"  # a released device is free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu0.lock", "gpu1.lock"]


def test_choice_among_user_visible_devices(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "2,5"}
    assert gpus.acquire_gpu(2, environ=env, folder=tmp_path) == "2,5"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,5"
    with pytest.raises(RuntimeError, match="gpu=3"):
        gpus.acquire_gpu(3, environ={"CUDA_VISIBLE_DEVICES": "2,5"}, folder=tmp_path)


def test_visible_devices_parsing():
    assert gpus.candidate_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpus.candidate_devices({"CUDA_VISIBLE_DEVICES": "0,1,-1,2"}) == ["0", "1"]
    assert gpus.candidate_devices({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}) == []
    assert gpus.candidate_devices({}, n_devices=3) == ["0", "1", "2"]


def test_lock_dir_from_environment(tmp_path):
    assert gpus.lock_dir({gpus.LOCK_ENV: str(tmp_path)}) == tmp_path
    assert str(gpus.lock_dir({})) == gpus.DEFAULT_LOCK_DIR


def test_job_gpus_reads_the_resource():
    assert gpus.job_gpus(SimpleNamespace(resources=SimpleNamespace(gpu=1))) == 1
    assert gpus.job_gpus(SimpleNamespace(resources=SimpleNamespace())) == 0
    assert gpus.job_gpus(SimpleNamespace()) == 0


HOLDER = textwrap.dedent(
    """
    import sys, time
    from embedscope import gpus
    env = {}
    print(gpus.acquire_gpu(1, environ=env, n_devices=2, folder=sys.argv[1], poll_seconds=0.05), flush=True)
    sys.stdin.readline()  # hold the lock until told to exit
    """
)


def _holder(folder):
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_processes_share_two_devices_and_wait_for_a_free_one(tmp_path):
    a, b = _holder(tmp_path), _holder(tmp_path)
    try:
        devices = {a.stdout.readline().strip(), b.stdout.readline().strip()}
        assert devices == {"0", "1"}
        c = _holder(tmp_path)  # both taken: waits
        time.sleep(0.5)
        assert c.poll() is None
        a.stdin.write("\n")
        a.stdin.flush()
        a.wait(timeout=10)  # its lock goes with the process
        assert c.stdout.readline().strip() in devices
        c.stdin.write("\n")
        c.stdin.flush()
        c.wait(timeout=10)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.stdin.write("\n")
                proc.stdin.flush()
                proc.wait(timeout=10)


START_JOB = textwrap.dedent(
    """
    import os, sys
    from types import SimpleNamespace
    import torch  # noqa: F401  (a torch stage's module is imported before start_job, as in the scripts)
    from embedscope import runtime
    job = SimpleNamespace(params=SimpleNamespace(device="auto"), config={"seed": 0}, threads=1, rule="r",
                          resources=SimpleNamespace(gpu=int(sys.argv[1])))
    device = runtime.start_job(job)
    print(os.environ.get("CUDA_VISIBLE_DEVICES"), device)
    """
)


@pytest.mark.parametrize("gpu, expected", [(1, "6"), (0, "6,7")])
def test_start_job_pins_the_device_of_a_gpu_job(tmp_path, gpu, expected):
    """runtime.start_job locks a device for a job with gpu=1 before torch looks for CUDA; others are untouched."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "6,7", gpus.LOCK_ENV: str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    out = subprocess.run([sys.executable, "-c", START_JOB, str(gpu)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    visible, device = out.stdout.split()
    assert visible == expected
    if gpu:
        assert "using GPU(s) CUDA_VISIBLE_DEVICES=6" in out.stderr
        assert (tmp_path / "gpu6.lock").exists()
    if not (tmp_path / "gpu6.lock").exists():
        assert list(tmp_path.iterdir()) == []
