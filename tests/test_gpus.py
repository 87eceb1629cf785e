"""GPU device choice on a multi-GPU box (embedscope.gpus), with fake device counts: no GPU needed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
from conftest import REPO, run_snakemake, write_config

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
    with pytest.raises(TimeoutError, match=r"no 1 free GPU\(s\) among \[.0., .1.\] after 0 s .*0: pid \d+, 1: pid \d+"):
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
    job = SimpleNamespace(params=SimpleNamespace(device=sys.argv[2]), config={"seed": 0}, threads=1, rule="r",
                          resources=SimpleNamespace(gpu=int(sys.argv[1])))
    device = runtime.start_job(job)
    print(os.environ.get("CUDA_VISIBLE_DEVICES"), device)
    """
)


def start_job(tmp_path, gpu: int, device: str = "auto"):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "6,7", gpus.LOCK_ENV: str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run([sys.executable, "-c", START_JOB, str(gpu), device], env=env, capture_output=True,
                          text=True)


def test_start_job_leaves_a_job_without_gpus_alone(tmp_path):
    out = start_job(tmp_path, gpu=0)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6,7", "cpu"]
    assert list(tmp_path.iterdir()) == []


def test_a_job_given_a_gpu_it_cannot_use_fails_at_once(tmp_path):
    """gpu=1 and no usable CUDA (this machine): the device is locked first, then the job stops, saying what
    torch sees, instead of running for hours on CPU."""
    out = start_job(tmp_path, gpu=1)
    assert out.returncode != 0
    assert "using GPU(s) CUDA_VISIBLE_DEVICES=6" in out.stderr
    assert "this job was given 1 GPU(s) (the gpu resource or a SLURM allocation) but torch sees no usable CUDA " \
           "device: torch 2.14.1" in out.stderr
    assert "torch.cuda.is_available() = False" in out.stderr and "Set 'device: cpu' to run on CPU." in out.stderr
    assert (tmp_path / "gpu6.lock").exists()


def test_device_cpu_runs_on_cpu_even_when_given_a_gpu(tmp_path):
    out = start_job(tmp_path, gpu=1, device="cpu")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6,7", "cpu"]
    assert "was given 1 GPU(s) but config key 'device' is 'cpu': running on CPU" in out.stderr


def test_device_cuda_without_a_gpu_names_what_torch_sees(tmp_path):
    out = start_job(tmp_path, gpu=0, device="cuda")
    assert out.returncode != 0
    assert "config key 'device' is 'cuda' but torch sees no usable CUDA device: torch 2.14.1" in out.stderr


NVIDIA_SMI_L = """GPU 0: NVIDIA H200 (UUID: GPU-5f1c2a3b-0d4e-4f6a-8b9c-0123456789ab)
GPU 1: NVIDIA H200 (UUID: GPU-aa11bb22-cc33-dd44-ee55-ff6677889900)
"""
UUIDS = {"0": "GPU-5f1c2a3b-0d4e-4f6a-8b9c-0123456789ab", "1": "GPU-aa11bb22-cc33-dd44-ee55-ff6677889900"}


def test_device_uuids_from_nvidia_smi():
    assert gpus.parse_device_uuids(NVIDIA_SMI_L) == UUIDS
    assert gpus.parse_device_uuids("") == {}


def test_a_card_named_by_index_and_by_uuid_is_one_lock(tmp_path):
    uuids = UUIDS
    assert gpus.acquire_gpu(1, environ={"CUDA_VISIBLE_DEVICES": "0"}, uuids=uuids, folder=tmp_path) == "0"
    held = dict(gpus._held)
    gpus._held.clear()  # a second job: same card, named by UUID
    try:
        with pytest.raises(TimeoutError, match=r"no 1 free GPU\(s\) among \['GPU-5f1c.*pid \d+"):
            gpus.acquire_gpu(1, environ={"CUDA_VISIBLE_DEVICES": UUIDS["0"]}, uuids=uuids, folder=tmp_path,
                             timeout=0.2, poll_seconds=0.05)
    finally:
        gpus._held.update(held)
    assert [p.name for p in tmp_path.iterdir()] == [f"{UUIDS['0']}.lock"]


def test_a_multi_gpu_job_holds_nothing_while_it_waits(tmp_path):
    """No hold-and-wait: a job that needs two devices and finds one free does not keep that one while waiting."""
    assert gpus.acquire_gpu(1, environ={}, n_devices=2, uuids={}, folder=tmp_path) == "0"
    held = dict(gpus._held)
    gpus._held.clear()
    try:
        with pytest.raises(TimeoutError, match="no 2 free GPU"):
            gpus.acquire_gpu(2, environ={}, n_devices=2, uuids={}, folder=tmp_path, timeout=0.2, poll_seconds=0.05)
        assert gpus._held == {}
        assert gpus.acquire_gpu(1, environ={}, n_devices=2, uuids={}, folder=tmp_path) == "1"  # "1" is free
    finally:
        gpus.release_gpus()
        gpus._held.update(held)


def test_slurm_gpu_allocation_is_counted():
    assert gpus.slurm_gpus({"SLURM_JOB_ID": "5", "SLURM_GPUS_ON_NODE": "2"}) == 2
    assert gpus.slurm_gpus({"SLURM_JOB_ID": "5", "SLURM_JOB_GPUS": "0,3"}) == 2
    assert gpus.slurm_gpus({"SLURM_JOB_ID": "5"}) == 0
    assert gpus.slurm_gpus({"SLURM_GPUS_ON_NODE": "2"}) == 0  # not in a SLURM job


# ---- which jobs ask for a GPU: the resources of the real DAG, as `snakemake -n` prints them -------------------

TORCH_RULES = {"finetune_resnet18", "extract_features", "extract_feature_shard"}
DAG_CONFIG = {
    "datasets": {"tiny": {"source": "embedded", "n_train": 200, "n_test": 100, "seed": 0}},
    "extractors": ["scattering", "resnet18", "resnet18_finetuned"],
    "resnet18": {"weights": "random", "shards": 2},  # its extraction runs as extract_feature_shard jobs
}
DAG_TARGETS = ["results/features/tiny/scattering.zarr", "results/features/tiny/resnet18.zarr",
               "results/models/tiny/resnet18_finetuned.pt"]


def dry_run_resources(workdir, *options, **config):
    """{rule: its jobs' resources} of a dry run of the real Snakefile, from the `resources:` line under each
    `rule NAME:` that `snakemake -n` prints."""
    write_config(workdir, {**DAG_CONFIG, **config})
    out = run_snakemake(workdir, "-n", *options, "--", *DAG_TARGETS).stdout
    jobs, rule = {}, None
    for line in out.splitlines():
        if line.startswith("rule "):
            rule = line[len("rule "):].rstrip(":")
        elif line.strip().startswith("resources:") and rule is not None:
            pairs = (item.split("=", 1) for item in line.split(":", 1)[1].split(", "))
            jobs.setdefault(rule, []).append({key.strip(): value.strip() for key, value in pairs})
            rule = None
    assert TORCH_RULES <= set(jobs), out[-3000:]
    return jobs


def slurm_profile():
    return ["--workflow-profile", str(REPO / "profiles" / "slurm")]


def test_device_cpu_with_the_slurm_profile_asks_for_no_gpu(tmp_path):
    jobs = dry_run_resources(tmp_path, *slurm_profile(), device="cpu")
    for rule in TORCH_RULES:
        for resources in jobs[rule]:
            assert "gpu" not in resources, (rule, resources)
            assert resources["slurm_partition"] == "main", (rule, resources)  # the profile's CPU partition


def test_device_cuda_with_the_slurm_profile_asks_for_one_gpu_on_the_gpu_partition(tmp_path):
    jobs = dry_run_resources(tmp_path, *slurm_profile(), device="cuda", slurm={"gpu_partition": "a100"})
    assert len(jobs["extract_feature_shard"]) == 2
    for rule, all_resources in jobs.items():
        for resources in all_resources:
            if rule in TORCH_RULES:
                assert (resources["gpu"], resources["slurm_partition"]) == ("1", "a100"), (rule, resources)
            else:  # t-SNE, figures, tables, ingest, the gather of the shards: CPU jobs on the CPU partition
                assert "gpu" not in resources and resources["slurm_partition"] == "main", (rule, resources)


def test_device_auto_with_the_slurm_profile_asks_for_gpus_though_snakemake_sees_none(tmp_path):
    """The login node has no GPU; the GPU nodes do. Locally (no SLURM) the same config asks for a GPU only where
    Snakemake sees one."""
    jobs = dry_run_resources(tmp_path / "slurm", *slurm_profile(), device="auto")
    assert all((r["gpu"], r["slurm_partition"]) == ("1", "gpu") for rule in TORCH_RULES for r in jobs[rule])
    local = dry_run_resources(tmp_path / "local", "--cores", "1", device="auto")
    expected = {"1"} if gpus.candidate_devices() else {None}
    assert {r.get("gpu") for rule in TORCH_RULES for r in local[rule]} == expected
    assert all("slurm_partition" not in r for rule in TORCH_RULES for r in local[rule])
