"""The real Snakemake on bad input and after a hard kill: a config a job would reject, a single-class image
folder and a link out of an image folder stop the dry run before any job; an image over the pixel cap stops
ingest, the file named; a run whose Snakemake process was killed with SIGKILL resumes with `--unlock` and the
same command."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SNAKEMAKE, run_snakemake, write_config
from PIL import Image

from embedscope.store import read_image_store
from embedscope.synthetic import png_claiming

pytestmark = pytest.mark.e2e


def test_the_dry_run_refuses_what_a_job_would_reject(tmp_path):
    write_config(tmp_path, {"datasets": {"m": {"source": "embedded", "n_train": 3000, "n_test": 1995}},
                            "extractors": ["scattering"]})
    result = run_snakemake(tmp_path, "-n", check=False)
    assert result.returncode == 1
    assert ("datasets.m: n_train + n_test = 4995 leaves 5 of the embedded MNIST subset's 5000 images out"
            in result.stderr + result.stdout)


def test_a_single_class_image_folder_is_refused_at_dag_time(tmp_path):
    root = tmp_path / "folder"
    (root / "cats").mkdir(parents=True)
    for i in range(6):
        Image.new("L", (8, 8), i).save(root / "cats" / f"{i}.png")
    write_config(tmp_path / "run", {"datasets": {"f": {"source": "imagefolder", "root": str(root), "n_test": 2}},
                                    "extractors": ["scattering"]})
    result = run_snakemake(tmp_path / "run", "-n", "results/data/f.zarr", check=False)
    assert result.returncode == 1
    assert f"datasets.f.root: {root} holds a single class folder, 'cats'" in result.stderr + result.stdout
    assert not (tmp_path / "run" / "results").exists()


def test_a_link_out_of_an_image_folder_stops_the_dry_run(tmp_path):
    """A symbolic link inside the root that resolves outside it is named and never read: not listed, not
    ingested, not embedded in the explorer page."""
    root = tmp_path / "folder"
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 40 * i).save(root / name / f"{i}.png")
    (tmp_path / "private").mkdir()
    Image.new("L", (8, 8), 255).save(tmp_path / "private" / "secret.png")
    (root / "cats" / "4.png").symlink_to(tmp_path / "private" / "secret.png")
    write_config(tmp_path / "run", {"datasets": {"f": {"source": "imagefolder", "root": str(root), "n_test": 2}},
                                    "extractors": ["scattering"]})
    result = run_snakemake(tmp_path / "run", "-n", "results/data/f.zarr", check=False)
    assert result.returncode == 1
    output = result.stderr + result.stdout
    assert f"1 symbolic link(s) under {root} resolve outside it (refused, never followed" in output
    assert f"{root}/cats/4.png -> {tmp_path}/private/secret.png" in output
    assert not (tmp_path / "run" / "results").exists()


def test_an_image_over_the_pixel_cap_stops_ingest_naming_the_file(tmp_path):
    """Only ingest runs (its store is the one target); the cap is checked from the file's header, before decoding,
    and nothing is stored."""
    root = tmp_path / "folder"
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 40 * i).save(root / name / f"{i}.png")
    (root / "dogs" / "bomb.png").write_bytes(png_claiming(8500, 8500))
    work = tmp_path / "run"
    write_config(work, {"datasets": {"f": {"source": "imagefolder", "root": str(root), "n_test": 4}},
                        "extractors": ["scattering"], "metrics": {"trustworthiness_k": 1, "knn_k": 1}})
    result = run_snakemake(work, "--cores", "1", "results/data/f.zarr", check=False)
    assert result.returncode == 1
    assert "Error in rule ingest_dataset" in result.stderr + result.stdout
    log = (work / "results" / "logs" / "data" / "f.log").read_text()
    assert (f"1 unreadable image(s) (set on_bad_image: skip to leave them out):\n  {root}/dogs/bomb.png (ValueError: "
            "8500x8500 = 72250000 pixels; at most 67108864 per image (embedscope.sources.MAX_IMAGE_PIXELS))") in log
    assert not (work / "results" / "data" / "f.zarr").exists()


def test_the_default_profile_resumes_incomplete_jobs():
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True


def test_a_run_killed_with_sigkill_resumes_after_unlock(tmp_path):
    work = tmp_path / "run"
    write_config(work, {"datasets": {"m": {"source": "embedded", "n_train": 20, "n_test": 20, "seed": 0}},
                        "extractors": ["scattering"], "device": "cpu",
                        "metrics": {"trustworthiness_k": 3, "knn_k": 3}})
    target = "results/data/m.zarr"
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "1", target,
               "--configfile", str(work / "config.yaml")]
    with open(tmp_path / "first.txt", "w") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    job_log, store = work / "results/logs/data/m.log", work / target
    deadline = time.monotonic() + 300
    while not job_log.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, (tmp_path / "first.txt").read_text()
    # SIGKILL for Snakemake itself while its job runs (a closed login session, the OOM killer): the job finishes
    # its store, but Snakemake never clears its lock or the store's incomplete marker
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    while not store.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.exists()
    incomplete = list((work / ".snakemake" / "incomplete").iterdir())
    assert len(incomplete) == 1

    # a target right after --configfile would be read as a second config file: a one-value option in between
    locked = run_snakemake(work, "--cores", "1", target, check=False)
    assert locked.returncode == 1 and "Directory cannot be locked" in locked.stderr + locked.stdout
    run_snakemake(work, "--cores", "1", target, "--unlock")
    # without the profile's rerun-incomplete: true, the same command stops on the incomplete store
    refused = run_snakemake(work, "--workflow-profile", "none", "--cores", "1", target, check=False)
    assert refused.returncode == 1 and "IncompleteFilesException" in refused.stderr + refused.stdout
    resumed = run_snakemake(work, "--cores", "1", target)
    assert "Finished jobid: 0 (Rule: ingest_dataset)" in resumed.stderr + resumed.stdout
    assert read_image_store(store).images.shape == (40, 28, 28, 1)
    assert not list((work / ".snakemake" / "incomplete").iterdir())
    again = run_snakemake(work, "-n", target)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert [p.name for p in Path(store).parent.iterdir()] == ["m.zarr"]
