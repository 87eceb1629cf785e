"""The conda environment pins exactly what pyproject.toml pins (conda itself cannot run here)."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def pins(lines):
    found = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_conda_env_pins_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = pins(project["dependencies"])
    assert len(wanted) == len(project["dependencies"]), "every runtime dependency is pinned with =="
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        assert pins(pip_section) == wanted, f"{env_file.name} drifted from pyproject.toml"
        python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
        assert python == "python=3.11"


def test_every_rule_uses_the_env_and_has_a_log():
    for smk in (REPO / "rules").glob("*.smk"):
        blocks = re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M)[1:]
        for block in blocks:
            name = block.split(":")[0]
            if "localrule: True" in block and "output:" not in block:
                continue  # a pure target rule
            assert "conda:" in block and "ENV" in block, f"{smk.name}: {name} has no conda: ENV"
            assert "log:" in block, f"{smk.name}: {name} has no log:"
    assert (REPO / "envs" / "embedscope.yaml").is_file()
