"""The workflow on a real one-node SLURM (tests/slurm_cluster.py): profiles/slurm as shipped, with overrides
for this tiny cluster only. Checks that the jobs ran as SLURM jobs, that the results equal a local run of the
same config, and that a CUDA rule reaches sbatch with a GPU request. Needs root and Debian's slurm-wlm + munge
(`.ci/run` installs them); skips otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from slurm_cluster import GPU_PARTITION, slurm_cluster  # noqa: F401 - the fixture

from embedscope.store import layer_names, load_features

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
DATASET = "tiny"
CONFIG = f"""
datasets:
  {DATASET}: {{source: embedded, n_train: 200, n_test: 100, seed: 0}}
extractors: [scattering]
device: cpu
tsne: {{n_iter: 250}}
"""
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def targets() -> list[str]:
    """Outputs of four rules (ingest, baseline, scattering features, t-SNE) in three waves of SLURM jobs."""
    return [
        f"results/baseline/{DATASET}/metrics.csv",
        f"results/features/{DATASET}/scattering.zarr",
        f"results/tsne/{DATASET}/scattering/scattering.csv",
    ]


def command(options, wanted) -> list[str]:
    # targets go after `--`: options such as --configfile or --set-resources take any number of values
    return [sys.executable, "-m", "snakemake", *map(str, options), "--", *wanted]


def threads(cluster) -> int:
    return min(2, cluster.cpus)


def slurm_args(cluster, *extra) -> list[str]:
    """profiles/slurm, with this test cluster's partition, no account, small resources and fast status checks."""
    return [
        "--workflow-profile", PROFILE,
        "--jobs", 4,
        "--default-resources", f"slurm_partition={cluster.partition}", "mem_mb=1000", "runtime=10",
        "--max-threads", threads(cluster),
        "--slurm-init-seconds-before-status-checks", 1,
        "--seconds-between-status-checks", 2,
        "--max-status-checks-per-second", 10,
        "--latency-wait", 10,
        "--retries", 0,
        "--verbose",
        *extra,
    ]  # fmt: skip


def start(options, wanted, cwd: Path) -> subprocess.Popen:
    out = open(cwd.parent / f"{cwd.name}.stderr", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command(options, wanted), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, cwd: Path, timeout=300) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    return (cwd.parent / f"{cwd.name}.stderr").read_text()


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):  # noqa: F811
    """The same config and targets run locally (--cores 2) and through profiles/slurm, at the same time.

    Both cap every job at the same thread count, so the numbers can be compared bit for bit."""
    root = tmp_path_factory.mktemp("slurm_runs")
    folders = {}
    for name in ("local", "slurm"):
        folder = root / name
        folder.mkdir()
        (folder / "config.yaml").write_text(CONFIG)
        folders[name] = folder
    wanted = targets()
    sf = REPO / "Snakefile"
    common = ["--snakefile", sf, "--configfile", "config.yaml"]
    started = time.monotonic()
    # the SLURM run mostly waits (job start-up, status checks), so the local run goes beside it
    # `device: cpu`: the torch rules ask for no GPU themselves, with the profile as shipped
    slurm = start([*common, *slurm_args(slurm_cluster)], wanted, folders["slurm"])
    local = start([*common, "--cores", threads(slurm_cluster)], wanted, folders["local"])
    local_log = finish(local, folders["local"])
    local_seconds = time.monotonic() - started
    slurm_log = finish(slurm, folders["slurm"])
    slurm_seconds = time.monotonic() - started
    assert local.returncode == 0, local_log[-5000:]
    assert slurm.returncode == 0, slurm_log[-8000:] + "\n" + slurm_cluster.diagnostics()
    print(f"local run {local_seconds:.1f} s, SLURM run {slurm_seconds:.1f} s")
    return {
        "folders": folders,
        "snakefile": sf,
        "slurm": slurm_log,
        "local": local_log,
        "targets": wanted,
        "cluster": slurm_cluster,
    }


def test_jobs_ran_as_slurm_jobs(runs):
    folder = runs["folders"]["slurm"]
    assert f"Using workflow specific profile {PROFILE}" in runs["slurm"]
    main_logs = sorted((folder / ".snakemake" / "log").glob("*.snakemake.log"))
    assert main_logs, "no main snakemake log"
    text = main_logs[-1].read_text()
    submitted = SUBMITTED.findall(text)
    calls = [line for line in text.splitlines() if "sbatch call: " in line]
    rules = {re.search(r"--comment rule_([a-z0-9_]+?)(_wildcards_\S+)?\s", line).group(1) for line in calls}
    assert {"ingest_dataset", "compute_baseline", "extract_features"} <= rules
    # this cluster's partition from --default-resources; `device: cpu` asks for no GPU, not even in extract_features
    assert all(f" -p {runs['cluster'].partition} " in line and "--gpus" not in line for line in calls)
    assert len(submitted) >= 3
    for _, slurm_id, log in submitted:
        log = Path(log)
        assert log.is_file() and log.name == f"{slurm_id}.log"
        assert log.is_relative_to(folder / ".snakemake" / "slurm_logs")
        state = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True).stdout
        assert "JobState=COMPLETED" in state, state
    # each rule's own log (results/logs/...) was written by the job on the node
    assert (folder / f"results/logs/data/{DATASET}.log").stat().st_size > 0
    assert (folder / f"results/logs/features/{DATASET}/scattering.log").exists()


def test_results_equal_a_local_run(runs):
    local, slurm = runs["folders"]["local"], runs["folders"]["slurm"]
    # the local run used profiles/default (its `resources: gpu: 1` is harmless when no job asks for a GPU)
    assert f"workflow specific profile {REPO / 'profiles' / 'default'}" in runs["local"]
    for target in runs["targets"]:
        a, b = local / target, slurm / target
        assert a.exists() and b.exists(), target
        if target.endswith(".csv"):
            left, right = pd.read_csv(a), pd.read_csv(b)
            timing = [c for c in left.columns if "seconds" in c]
            pd.testing.assert_frame_equal(left.drop(columns=timing), right.drop(columns=timing))
        elif target.endswith(".zarr"):
            assert layer_names(a) == layer_names(b)
            for layer in layer_names(a):
                for split in ("train", "test"):
                    x, y = load_features(a, layer, split), load_features(b, layer, split)
                    assert x.features.shape[0] > 0
                    assert np.array_equal(x.features, y.features)
                    assert np.array_equal(x.labels, y.labels)
                    assert np.array_equal(x.index, y.index)


def _stream(proc, lines):
    for line in proc.stderr:
        lines.append(line)


def test_gpu_rule_reaches_sbatch_with_a_gpu_request(runs, tmp_path):
    """`device: cuda` with the profile as shipped: a torch rule asks for one GPU on the GPU partition (config key
    slurm.gpu_partition, default "gpu"), submitted for real."""
    cluster = runs["cluster"]
    folder = tmp_path / "gpu"
    shutil.copytree(runs["folders"]["slurm"], folder, symlinks=True)
    store = f"results/features/{DATASET}/scattering.zarr"
    options = ["--snakefile", runs["snakefile"], "--configfile", "config.yaml", "--config", "device=cuda",
               "--forcerun", "extract_features"]
    cmd = command(options + slurm_args(cluster), [store])
    proc = subprocess.Popen(cmd, cwd=folder, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=_stream, args=(proc, lines), daemon=True)
    reader.start()
    call = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and call is None:
            call = next((x for x in lines if "sbatch call:" in x and "rule_extract_features" in x), None)
            if proc.poll() is not None and call is None:
                reader.join(timeout=5)
                call = next((x for x in lines if "sbatch call:" in x and "rule_extract_features" in x), None)
                break
            time.sleep(0.5)
        # the job may be refused at once (a node without GPUs), or pend; then cancel it, snakemake gives up
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            cluster.cancel_all()
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        cluster.cancel_all()
        reader.join(timeout=10)
    assert call is not None, "".join(lines[-80:])
    outcome = [x.strip() for x in lines if "sbatch failed" in x or "submitted with SLURM jobid" in x]
    print("GPU request on a node without GPUs:", outcome[:1])
    assert re.search(r"--gpus=1\b|--gres=gpu:1\b", call), call
    assert f"-p {GPU_PARTITION}" in call, call
