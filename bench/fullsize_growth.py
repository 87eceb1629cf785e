"""How each stage's peak memory grows from a small scale of the full study to its real size.

    .venv/bin/python bench/fullsize_growth.py SMALL_WORKDIR FULL_WORKDIR

Both arguments are ``--workdir`` folders of ``bench/bench_fullsize.py`` runs (e.g. ``--scale 0.05`` and the
default full size). For every stage (rule x dataset, and extractor for the extraction; the largest job of the
stage) it prints the true peak at both sizes, the bytes the stage must hold whatever the implementation
(``held``: one uint8 copy of the images for ingest, whose torchvision readers decode a whole split file or
CIFAR-10 archive into one array, and for fine-tuning; one float32 feature layer for the classifier and
embedding tables, one layer's test split for a t-SNE map; nothing for the stages that stream), and the growth of
the peak beyond those bytes, ``(peak_full - held_full) / (peak_small - held_small)``. A stage that streams keeps
that ratio near 1; the target is < 1.3. The stages that draw or embed a t-SNE map (MAP_RULES) are sized by the
map's points, which the config bounds (``max_points``) rather than by the dataset: their ``map_points`` at both
scales are given beside them, since at a small scale the test split can be smaller than that bound.
Writes results/benchmarks/fullsize_growth.csv.

``--equal-points WORKDIR`` compares those stages at the same number of points: WORKDIR is a full-size work
directory whose ``results/data``, ``results/features/<dataset>``, ``results/models`` and ``results/baseline`` link
to the full run's, run with the full run's ``study.yaml`` with the dataset's ``max_points`` set to the small run's
map size (500 at ``--scale 0.05``), for example

    snakemake --directory WORKDIR --configfile WORKDIR/study.yaml --cores 2 results/explorer/mnist.html \
        results/figures/mnist/tsne_thumbs/scattering/scattering.png

It writes results/benchmarks/fullsize_growth_equal_points.csv.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fullsize import job_rows  # noqa: E402
from csvout import write_rows  # noqa: E402

COLUMNS = ["stage", "jobs", "peak_small_mb", "peak_full_mb", "raw_ratio", "held_small_mb", "held_full_mb",
           "growth_beyond_held", "map_points_small", "map_points_full"]
MAP_RULES = ("embed_tsne", "plot_tsne", "plot_tsne_thumbs", "plot_tsne_layers", "build_explorer")
TEST_SPLIT = 1  # embedscope.store.split_code("test")


def _images_bytes(work: Path, dataset: str) -> int:
    images = zarr.open_group(str(work / "results" / "data" / f"{dataset}.zarr"), mode="r")["images"]
    return int(images.nbytes)


def _layers(work: Path, dataset: str):
    """(extractor, layer, zarr group) of every layer of every feature store of ``dataset``."""
    for path in sorted((work / "results" / "features" / dataset).glob("*.zarr")):
        group = zarr.open_group(str(path), mode="r")
        for layer in group.attrs["layers"]:
            yield path.stem, layer, group[layer]


def held_bytes(work: Path, rule: str, job: str) -> int:
    """Bytes a job of ``rule`` must hold at once, read from the stores its run wrote."""
    parts = job.split("/")
    dataset = parts[1]
    if rule in ("ingest_dataset", "finetune_resnet18"):
        return _images_bytes(work, dataset)
    if rule in ("evaluate_classifiers", "evaluate_embeddings"):
        widest = max(int(g["features"].nbytes) for _, _, g in _layers(work, dataset))
        if rule == "evaluate_classifiers":  # raw pixels are one of its feature sets, in float32
            widest = max(widest, 4 * _images_bytes(work, dataset))
        return widest
    if rule == "embed_tsne":
        extractor, layer = parts[2], parts[3]
        group = zarr.open_group(str(work / "results" / "features" / dataset / f"{extractor}.zarr"), mode="r")[layer]
        n_test = int((group["split"][...] == TEST_SPLIT).sum())
        return 4 * n_test * int(group["features"].shape[1])
    return 0


def map_points(work: Path, stage: str) -> int | None:
    """Points of the largest t-SNE map of the stage's dataset (from the maps' sidecars), for MAP_RULES only."""
    rule, dataset = stage.split(" ")[0], stage.split(" ")[1].split("/")[0]
    if rule not in MAP_RULES:
        return None
    sizes = [json.loads(p.read_text())["n"] for p in (work / "results" / "tsne" / dataset).glob("*/*.json")]
    return max(sizes) if sizes else None


def stage_peaks(work: Path) -> dict[str, tuple[int, float, float]]:
    """stage -> (jobs, the largest peak MB among its jobs, the held MB of that job)."""
    jobs: dict[str, list[dict]] = {}
    for row in job_rows(work, 0):
        parts = row["job"].split("/")
        stage = f"{row['rule']} {'/'.join(parts[1:3] if row['rule'] == 'extract_features' else parts[1:2])}"
        jobs.setdefault(stage, []).append(row)
    stages = {}
    for stage, rows in jobs.items():
        top = max(rows, key=lambda r: r["peak_rss_mb"])
        stages[stage] = (len(rows), top["peak_rss_mb"], held_bytes(work, top["rule"], top["job"]) / 2**20)
    return stages


def growth_rows(small_dir: Path, full_dir: Path) -> list[dict]:
    """One row per stage of ``full_dir``: the peaks at both scales, the held bytes and the growth beyond them."""
    small, full = stage_peaks(small_dir), stage_peaks(full_dir)
    rows = []
    for stage in sorted(full):
        jobs, peak_full, held_full = full[stage]
        _, peak_small, held_small = small.get(stage, (0, float("nan"), 0.0))
        rows.append({"stage": stage, "jobs": jobs, "peak_small_mb": round(peak_small), "peak_full_mb": round(peak_full),
                     "raw_ratio": round(peak_full / peak_small, 2), "held_small_mb": round(held_small),
                     "held_full_mb": round(held_full),
                     "growth_beyond_held": round((peak_full - held_full) / (peak_small - held_small), 2),
                     "map_points_small": map_points(small_dir, stage),
                     "map_points_full": map_points(full_dir, stage)})
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'stage':<34} {'jobs':>4} {'small MB':>8} {'full MB':>8} {'raw':>5} {'held s':>7} {'held f':>7} "
          f"{'beyond':>6} {'map points':>12}")
    for r in rows:
        print(f"{r['stage']:<34} {r['jobs']:>4} {r['peak_small_mb']:>8} {r['peak_full_mb']:>8} {r['raw_ratio']:>5} "
              f"{r['held_small_mb']:>7} {r['held_full_mb']:>7} {r['growth_beyond_held']:>6} "
              + (f"{r['map_points_small']:>5} -> {r['map_points_full']}" if r["map_points_full"] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("small", type=Path)
    parser.add_argument("full", type=Path)
    parser.add_argument("--equal-points", type=Path, metavar="WORKDIR",
                        help="a full-size work directory whose maps have the small run's points (see above)")
    args = parser.parse_args()
    rows = growth_rows(args.small, args.full)
    out = write_rows(rows, "fullsize_growth.csv", COLUMNS)
    print_rows(rows)
    data = [r for r in rows if not r["map_points_full"]]
    worst = max(data, key=lambda r: r["growth_beyond_held"])
    print(f"largest growth beyond the held bytes of a stage sized by the data: {worst['growth_beyond_held']}x "
          f"({worst['stage']}); table {out}")
    if args.equal_points:
        equal = [r for r in growth_rows(args.small, args.equal_points) if r["map_points_full"]]
        out = write_rows(equal, "fullsize_growth_equal_points.csv", COLUMNS)
        print(f"\nthe stages a map sizes, at full size with the small run's map points ({args.equal_points}):")
        print_rows(equal)
        worst = max(equal, key=lambda r: r["growth_beyond_held"])
        print(f"largest growth beyond the held bytes at equal points: {worst['growth_beyond_held']}x "
              f"({worst['stage']}); table {out}")


if __name__ == "__main__":
    main()
