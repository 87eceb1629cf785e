"""The key numbers of a finished study, as a reference file, and the check of a run against such a file.

The numbers: the baseline's L1/L2 accuracy and macro-F1, the accuracy and macro-F1 of every classifier row, every
number of every embedding-quality row, and the fine-tuned CNN's test accuracy (from its predictions). They are
read from a run's ``results/`` folder through :mod:`embedscope.artifacts` and written one per line as
``table,row,metric,value``.

Regenerate the default study's reference (``config.yaml``, dataset ``mnist5k``) after the Quickstart's first
command, from the repository root::

    .venv/bin/snakemake --cores all && .venv/bin/python tests/reference/make_default_study_reference.py results

Check a finished default run against the committed reference instead (exit status 1 and the differing numbers
when they disagree)::

    .venv/bin/python tests/reference/make_default_study_reference.py results --check

The test suite's small study (``SMALL_CONFIG`` in tests/conftest.py) has its own reference, written by the same
script from one finished run of that config (``--dataset mnist_small --out tests/reference/small_study.csv``).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))  # the workflow's library, also without an install

from embedscope.artifacts import (  # noqa: E402
    first_replicate,
    read_baseline,
    read_classifiers,
    read_embedding_quality,
    read_predictions,
)

DEFAULT_DATASET = "mnist5k"
DEFAULT_REFERENCE = HERE / "default_study.csv"
SMALL_REFERENCE = HERE / "small_study.csv"
COLUMNS = ("table", "row", "metric", "value")
CLASSIFIER_METRICS = ("accuracy", "macro_f1")
EMBEDDING_METRICS = ("trustworthiness", "knn_accuracy_2d", "silhouette_features", "silhouette_2d",
                     "ncc_accuracy", "nc1")
# Fractions of a count of test images or points: equal up to float rounding, or the run differs.
COUNT_METRICS = {"accuracy", "knn_accuracy_2d", "ncc_accuracy"}
# Everything else (macro-F1, trustworthiness, silhouettes, NC1) is a float computation whose last digits may move
# with the BLAS build or the CPU's vector width; NC1 goes through a pseudo-inverse, hence the relative tolerance.
COUNT_ATOL = 1e-9
FLOAT_RTOL, FLOAT_ATOL = 1e-6, 1e-9


def study_numbers(results: str | os.PathLike, dataset: str = DEFAULT_DATASET) -> pd.DataFrame:
    """The key numbers of one dataset of a finished run, as rows (table, row, metric, value); of its first
    fine-tuning replicate where it has several."""
    results = Path(results)
    rows: list[tuple[str, str, str, float]] = []
    baseline = read_baseline(results / "baseline" / dataset / "metrics.csv")
    for _, line in baseline.iterrows():
        for metric in CLASSIFIER_METRICS:
            rows.append(("baseline", str(line["distance"]), metric, float(line[metric])))
    classifiers = first_replicate(read_classifiers(results / "metrics" / dataset / "classifiers.csv"))
    for _, line in classifiers.iterrows():
        key = f"{line['features']}/{line['layer']}/{line['classifier']}"
        for metric in CLASSIFIER_METRICS:
            rows.append(("classifiers", key, metric, float(line[metric])))
    quality = first_replicate(read_embedding_quality(results / "metrics" / dataset / "embedding_quality.csv"))
    for _, line in quality.iterrows():
        key = f"{line['extractor']}/{line['layer']}"
        for metric in EMBEDDING_METRICS:
            rows.append(("embedding_quality", key, metric, float(line[metric])))
    predictions = read_predictions(results / "models" / dataset / "predictions.csv")
    accuracy = float(np.mean(predictions["pred"].to_numpy() == predictions["label"].to_numpy()))
    rows.append(("cnn", "resnet18_finetuned", "test_accuracy", accuracy))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_reference(numbers: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the rows with every float in full (repr round-trips exactly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for table, row, metric, value in numbers.itertuples(index=False):
            writer.writerow([table, row, metric, repr(float(value))])
    return path


def read_reference(path: str | os.PathLike) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"table": str, "row": str, "metric": str, "value": float})
    if tuple(frame.columns) != COLUMNS:
        raise ValueError(f"{path}: columns {list(frame.columns)}, expected {list(COLUMNS)}")
    return frame


def value(reference: pd.DataFrame, table: str, row: str, metric: str) -> float:
    """One number of a reference; KeyError when it has no such line."""
    hit = reference[(reference["table"] == table) & (reference["row"] == row) & (reference["metric"] == metric)]
    if len(hit) != 1:
        raise KeyError(f"{len(hit)} reference lines for {table} / {row} / {metric}")
    return float(hit["value"].item())


def differences(numbers: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Every line missing on either side or outside its tolerance, in words; empty when the run matches."""
    keys = ["table", "row", "metric"]
    merged = numbers.merge(reference, on=keys, how="outer", suffixes=("_run", "_reference"), indicator=True)
    problems = []
    for line in merged.to_dict("records"):
        name = f"{line['table']} / {line['row']} / {line['metric']}"
        run, ref = float(line["value_run"]), float(line["value_reference"])
        if line["_merge"] == "left_only":
            problems.append(f"{name}: {run!r} in the run, not in the reference")
        elif line["_merge"] == "right_only":
            problems.append(f"{name}: {ref!r} in the reference, not in the run")
        elif line["metric"] in COUNT_METRICS:
            if not np.isclose(run, ref, rtol=0, atol=COUNT_ATOL):
                problems.append(f"{name}: run {run!r}, reference {ref!r}")
        elif not np.isclose(run, ref, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True):
            problems.append(f"{name}: run {run!r}, reference {ref!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the results/ folder of a finished run")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset of the run (default {DEFAULT_DATASET})")
    parser.add_argument("--out", default=str(DEFAULT_REFERENCE), help="reference file to write or check against")
    parser.add_argument("--check", action="store_true", help="compare the run with --out instead of writing it")
    args = parser.parse_args(argv)
    numbers = study_numbers(args.results, args.dataset)
    if args.check:
        problems = differences(numbers, read_reference(args.out))
        for problem in problems:
            print(problem)
        print(f"{args.results} ({args.dataset}) vs {args.out}: "
              f"{'differs in ' + str(len(problems)) + ' number(s)' if problems else 'every number matches'}")
        return 1 if problems else 0
    path = write_reference(numbers, args.out)
    print(f"wrote {len(numbers)} numbers of {args.dataset} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
