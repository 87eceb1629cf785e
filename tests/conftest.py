"""Shared fixtures: the repository, a Snakemake runner, and one small end-to-end run of the real DAG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# On the CI machine (root, Chromium and SLURM installed by tests/setup.sh) every test must run: a skip there means
# a missing package or a broken setup, so it is reported as a failure with its reason.
CI = os.environ.get("CI") == "true"

# A small but complete study: every extractor, layer, figure and table of the default run, on 500 images.
SMALL_CONFIG = {
    "datasets": {"mnist_small": {"source": "embedded", "n_train": 300, "n_test": 200, "seed": 0}},
    "extractors": ["scattering", "resnet18", "resnet18_finetuned"],
    "device": "cpu",
    "resnet18": {"weights": "random"},
    "finetune": {"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 64,
                 "stage2_lr_min": 1.0e-4, "stage2_lr_max": 1.0e-3},
    "tsne": {"perplexity": 15, "n_iter": 250},
    "metrics": {"random_forest_trees": 20},
}


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: reason")
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)


def _fail_skip(report) -> None:
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where every test must run: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # a module-level pytest.skip / importorskip skips a whole file at collection
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped:
        _fail_skip(report)


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1500, env=None):
    """Run the real Snakemake on the repository's Snakefile in ``workdir``; returns CompletedProcess."""
    cmd = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-8000:]}"
        )
    return result


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """One finished run of the whole DAG (rule all) on SMALL_CONFIG; returns its work directory."""
    workdir = tmp_path_factory.mktemp("small_run")
    write_config(workdir, SMALL_CONFIG)
    run_snakemake(workdir, "--cores", "2")
    return workdir
