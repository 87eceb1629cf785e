#!/usr/bin/env bash
# What only a GPU can prove, in one run (under 10 minutes on one modern GPU), from a clean clone:
#   bash bench/gpu_check.sh
# Sets up .venv as the Quickstart does when it is missing (needs PyPI), then runs bench/gpu_check.py: the CUDA
# unit tests, the default study's fine-tuning on CUDA with mixed precision, predictions against the softmax
# store, the checkpoint loaded on a CPU-only process, and images/s of training and extraction against bare
# model(x) loops. Prints one table and writes results/benchmarks/gpu_check.csv; exits non-zero if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv/bin/snakemake || { python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'; }
exec .venv/bin/python bench/gpu_check.py "$@"
