#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, reusing what is already there:
#   - .venv with embedscope and its test extras (pip; torch comes from PyPI as pinned in pyproject.toml)
#   - Debian packages for the SLURM test (slurm-wlm, munge) and the browser test (chromium), when root
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/snakemake ] || ! .venv/bin/python -c "import embedscope, pytest, playwright" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
fi

need=()
command -v slurmctld >/dev/null 2>&1 || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || need+=(munge)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    # Outside CI those tests then skip; under CI=true tests/conftest.py reports every skip as a failure.
    echo "not root or no apt-get: cannot install ${need[*]}; the SLURM and browser tests will skip," \
      "which under CI=true fails the run" >&2
  fi
fi
