"""What the neural-collapse statistics cost fine-tuning: the default study's fine-tuning with and without them.

Ingests the default study's data (config.yaml's mnist5k: 3,000 train / 2,000 test, embedded, offline) into a
temporary store, then fine-tunes it with config.yaml's recipe twice on this CPU, once writing collapse.csv and
once not, in alternating order over ``--repeats`` pairs so that a change in the machine's load hits both. Also
times the probe's own end-of-epoch pass inside the run that has it (the same load as the training around it).
Prints seconds, the overhead in percent, and writes results/benchmarks/bench_collapse.csv.

    .venv/bin/python bench/bench_collapse.py [--stage1-epochs 2 --stage2-epochs 7] [--points 1000] [--repeats 1]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from csvout import write_rows  # noqa: E402  (bench/ is on sys.path when a script runs)

from embedscope import finetune as ft  # noqa: E402
from embedscope.datasets import ingest_dataset  # noqa: E402


class TimedProbe(ft.CollapseProbe):
    """The workflow's probe, adding up the seconds its end-of-epoch passes take."""

    seconds = 0.0

    def measure(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().measure(*args, **kwargs)
        finally:
            TimedProbe.seconds += time.perf_counter() - start


def run(store: Path, out: Path, recipe: dict, seed: int, collapse: bool) -> float:
    start = time.perf_counter()
    ft.finetune_resnet18(store, out / "model.pt", out / "log.csv", out / "predictions.csv",
                         out / "collapse.csv" if collapse else None, finetune=recipe,
                         resnet18={"weights": "random"}, seed=seed, device="cpu")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1-epochs", type=int, default=None, help="default: config.yaml's")
    parser.add_argument("--stage2-epochs", type=int, default=None, help="default: config.yaml's")
    parser.add_argument("--points", type=int, default=None, help="finetune.collapse_points (default: the schema's)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    (name, settings), = config["datasets"].items()
    recipe = {k: v for k, v in config["finetune"].items() if k != "replicates"}  # how often, not how: the workflow's
    for key in ("stage1_epochs", "stage2_epochs"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    if args.points is not None:
        recipe["collapse_points"] = args.points
    points = ft.recipe_from_config(recipe)["collapse_points"]
    torch.manual_seed(config["seed"])
    torch.use_deterministic_algorithms(config["deterministic"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / f"{name}.zarr"
        ingest_dataset(settings, store, dataset=name)
        ft.CollapseProbe = TimedProbe  # finetune_resnet18 builds its probe through the module's name
        for repeat in range(args.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for collapse in order:
                TimedProbe.seconds = 0.0
                seconds = run(store, Path(tmp) / f"run{repeat}{int(collapse)}", recipe, config["seed"], collapse)
                rows.append({"repeat": repeat, "collapse": collapse, "collapse_points": points,
                             "epochs": recipe["stage1_epochs"] + recipe["stage2_epochs"],
                             "seconds": round(seconds, 2), "probe_seconds": round(TimedProbe.seconds, 2)})
                print(rows[-1], flush=True)
    plain = sum(r["seconds"] for r in rows if not r["collapse"])
    probed = sum(r["seconds"] for r in rows if r["collapse"])
    probe = sum(r["probe_seconds"] for r in rows if r["collapse"])
    print(f"fine-tuning {name}: {plain:.1f} s without, {probed:.1f} s with the collapse statistics "
          f"({100 * (probed / plain - 1):+.1f}% end to end); the probe's own passes {probe:.1f} s, "
          f"{100 * probe / (probed - probe):.1f}% of the training around them")
    print(f"rows: {write_rows(rows, 'bench_collapse.csv')}")


if __name__ == "__main__":
    main()
