"""Static checks that CI must keep clean: Snakemake's linter and ruff."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_snakemake_lint_is_clean(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1", "--directory", str(tmp_path),
         "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / "config.yaml")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Congratulations" in output, output


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "."], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
