"""The one owner of every file (other than Zarr stores and checkpoints) that one stage hands to another.

Each format below has its column list, a writer and a validated reader, and nothing else in the package or
its tests parses or writes it; all of them are written through :func:`atomic_write` (a temporary sibling,
renamed into place only when whole), so a killed job never leaves a half-written file under its real name.

============================================  =====================================  ==========================
file                                          writer                                 reader
============================================  =====================================  ==========================
``tsne/{ds}/{extractor}/{layer}.csv``         :func:`write_tsne`                     :func:`read_tsne`
``tsne/{ds}/{extractor}/{layer}.json``        :func:`write_tsne` (the sidecar)       :func:`read_tsne_meta`
``models/{ds}/predictions.csv``               :func:`write_predictions`              :func:`read_predictions`
``models/{ds}/training_log.csv``              :func:`write_training_log`             :func:`read_training_log`
``metrics/{ds}/collapse.csv``                 :func:`write_collapse`                 :func:`read_collapse`
``baseline/{ds}/metrics.csv``                 :func:`write_table`                    :func:`read_baseline`
``metrics/{ds}/classifiers.{csv,md}``         :func:`write_table`                    :func:`read_classifiers`
``metrics/{ds}/embedding_quality.{csv,md}``   :func:`write_table`                    :func:`read_embedding_quality`
``metrics/{ds}/cka.csv``                      :func:`write_table`                    :func:`read_cka`
``metrics/{ds}/cka.md`` (the matrix)          :func:`write_text`                     (people)
``metrics/{ds}/replicates/{r}/*.csv``         :func:`write_table`                    the two readers above
any PNG figure                                :func:`save_figure`                    (images)
``explorer/{ds}.html``                        :func:`write_text`                     (a browser)
============================================  =====================================  ==========================

Zarr image and feature stores are owned by :mod:`embedscope.store`; the fine-tuned checkpoint and the
training resume file by :mod:`embedscope.checkpoint`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedscope.intervals import HIGH, LOW, interval_columns
from embedscope.temporaries import remove_stale


class ArtifactError(ValueError):
    """A file that a stage hands on is missing, malformed or inconsistent with its format."""


# ---- atomic writes ---------------------------------------------------------------------------------------


def temporary_sibling(path: str | os.PathLike, suffix: str = "") -> Path:
    """``.{name}.tmp-{pid}{suffix}`` beside ``path``: hidden, unique per process, on the same filesystem."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` only if the block succeeds.

    ``suffix`` keeps a file extension on the temporary name for writers that choose the format by it
    (matplotlib, ``torch.save``). On any exception the temporary file is removed and ``path`` is untouched.
    Temporaries of ``path`` left by a process that died (SIGKILL, out of memory) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = temporary_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_figure(fig, path: str | os.PathLike, dpi: int) -> None:
    """Write a matplotlib Figure as PNG at ``dpi``, atomically, without run-dependent metadata."""
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})


def _read_csv(path: str | os.PathLike, required: Sequence[str], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} {path} does not exist")
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError) as exc:  # pandas: EmptyDataError, ParserError (both ValueError)
        raise ArtifactError(f"{what} {path} is not a readable CSV file: {exc}") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ArtifactError(f"{what} {path} lacks column(s) {missing}; expected at least {list(required)}")
    return table


def _write_rows(path: str | os.PathLike, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """CSV of dict rows with floats written by ``repr`` (shortest round-trip form); missing values empty."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        for row in rows:
            # float() first: numpy's float64 is a float whose repr is "np.float64(...)"
            writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()})


def _unique_index(table: pd.DataFrame, path, what: str) -> pd.DataFrame:
    if table["index"].duplicated().any():
        raise ArtifactError(f"{what} {path}: column 'index' has duplicate sample indices")
    return table


# ---- t-SNE maps: csv + JSON sidecar -------------------------------------------------------------------------

TSNE_COLUMNS = ("index", "x", "y", "label")
TSNE_PREDICTION_COLUMNS = ("pred", "prob")  # only in maps of the fine-tuned extractor
TSNE_FLOAT_FORMAT = "%.6f"


def write_tsne(csv_path: str | os.PathLike, table: pd.DataFrame, meta_path: str | os.PathLike | None = None,
               meta: Mapping[str, Any] | None = None) -> None:
    """The map (TSNE_COLUMNS [+ pred, prob]) and its sidecar (N, D, class names, settings), atomically."""
    missing = [c for c in TSNE_COLUMNS if c not in table.columns]
    if missing:
        raise ArtifactError(f"t-SNE map for {csv_path} lacks column(s) {missing}")
    if meta_path is not None:
        write_text(meta_path, json.dumps(dict(meta or {}), indent=2, sort_keys=True, default=str) + "\n")
    write_text(csv_path, table.to_csv(index=False, float_format=TSNE_FLOAT_FORMAT))


def read_tsne(path: str | os.PathLike) -> pd.DataFrame:
    """A t-SNE map: unique sample indices, finite coordinates."""
    table = _read_csv(path, TSNE_COLUMNS, "t-SNE map")
    _unique_index(table, path, "t-SNE map")
    if not np.isfinite(table[["x", "y"]].to_numpy(dtype=np.float64)).all():
        raise ArtifactError(f"t-SNE map {path}: columns x, y must be finite numbers")
    return table


def read_tsne_meta(path: str | os.PathLike | None) -> dict[str, Any]:
    """The JSON sidecar of a t-SNE map ({} for ``None``)."""
    if path is None:
        return {}
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"t-SNE metadata {path} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"t-SNE metadata {path} is not a JSON object")
    return meta


# ---- predictions.csv ----------------------------------------------------------------------------------------

PREDICTION_COLUMNS = ("index", "label", "pred", "prob", "loss")  # then prob_0 .. prob_{C-1}


def prediction_columns(n_classes: int) -> list[str]:
    return [*PREDICTION_COLUMNS, *[f"prob_{c}" for c in range(int(n_classes))]]


def write_predictions(path: str | os.PathLike, index: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                      losses: np.ndarray) -> None:
    """Test predictions: sample index, true label, argmax, its probability, loss, every class probability."""
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    rows = [
        {"index": int(i), "label": int(y), "pred": int(p), "prob": float(pr[p]), "loss": float(loss),
         **{f"prob_{c}": float(v) for c, v in enumerate(pr)}}
        for i, y, p, pr, loss in zip(index, labels, pred, probs, losses, strict=True)
    ]
    _write_rows(path, prediction_columns(probs.shape[1]), rows)


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """predictions.csv with unique sample indices."""
    table = _read_csv(path, PREDICTION_COLUMNS, "predictions")
    return _unique_index(table, path, "predictions")


def prediction_class_count(table: pd.DataFrame) -> int:
    """C: the number of ``prob_{c}`` columns."""
    return sum(1 for c in table.columns if str(c).startswith("prob_"))


# ---- training_log.csv ---------------------------------------------------------------------------------------

TRAINING_LOG_KINDS = ("step", "epoch")


def training_log_columns(n_groups: int) -> list[str]:
    """kind (step | epoch), stage, epoch, step, one lr per layer group, train/test loss, test accuracy."""
    return ["kind", "stage", "epoch", "step", *[f"lr_{g}" for g in range(int(n_groups))], "train_loss",
            "test_loss", "test_accuracy"]


def write_training_log(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], n_groups: int) -> None:
    _write_rows(path, training_log_columns(n_groups), rows)


def read_training_log(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(step rows, epoch rows, lr columns), each sorted by step."""
    table = _read_csv(path, ("kind", "stage", "epoch", "step", "train_loss", "test_loss"), "training log")
    lr_columns = sorted((c for c in table.columns if c.startswith("lr_")), key=lambda c: int(c[3:]))
    if not lr_columns:
        raise ArtifactError(f"training log {path} has no learning-rate column (lr_0, lr_1, ...)")
    steps = table[table["kind"] == "step"].sort_values("step", kind="stable")
    epochs = table[table["kind"] == "epoch"].sort_values("step", kind="stable")
    if steps.empty:
        raise ArtifactError(f"training log {path} has no step rows")
    return steps, epochs, lr_columns


# ---- collapse.csv ------------------------------------------------------------------------------------------

COLLAPSE_COLUMNS = ("stage", "epoch", "layer", "metric", "value", "images")


def write_collapse(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Neural-collapse statistics through fine-tuning, one row per (stage, epoch, layer, metric)."""
    _write_rows(path, COLLAPSE_COLUMNS, rows)


def read_collapse(path: str | os.PathLike) -> pd.DataFrame:
    """collapse.csv with one value per (stage, epoch, layer, metric), in training order."""
    table = _read_csv(path, COLLAPSE_COLUMNS, "collapse statistics")
    keys = ["stage", "epoch", "layer", "metric"]
    repeated = table[table.duplicated(keys)]
    if len(repeated):
        first = repeated.iloc[0]
        raise ArtifactError(f"collapse statistics {path} hold stage {first['stage']} epoch {first['epoch']} "
                            f"{first['layer']} {first['metric']} more than once")
    return table.sort_values(["stage", "epoch"], kind="stable").reset_index(drop=True)


# ---- tables: baseline, classifiers, embedding quality -------------------------------------------------------

# Each accuracy column is followed by its 95% Wilson interval, <metric>_low and <metric>_high
# (embedscope.intervals); n is the baseline's n_test, the test split for classifiers, and for the embedding
# table the map's n (knn_accuracy_2d) and the test split's n_test (ncc_accuracy).
BASELINE_ACCURACIES = ("accuracy",)
CLASSIFIER_ACCURACIES = ("accuracy",)
EMBEDDING_ACCURACIES = ("knn_accuracy_2d", "ncc_accuracy")
BASELINE_COLUMNS = interval_columns(("dataset", "method", "distance", "accuracy", "macro_f1", "n_test"),
                                    BASELINE_ACCURACIES)
CLASSIFIER_COLUMNS = interval_columns(("dataset", "features", "layer", "D", "classifier", "accuracy",
                                       "macro_precision", "macro_recall", "macro_f1", "fit_seconds"),
                                      CLASSIFIER_ACCURACIES)
EMBEDDING_COLUMNS = interval_columns(("dataset", "extractor", "layer", "D", "n", "n_test", "n_quality",
                                      "trustworthiness", "knn_accuracy_2d", "silhouette_features", "silhouette_2d",
                                      "ncc_accuracy", "nc1"), EMBEDDING_ACCURACIES)
# one row per ordered pair of layers (pixels first, then every extractor's layers in depth order), both orders
CKA_COLUMNS = ("dataset", "features_a", "layer_a", "D_a", "features_b", "layer_b", "D_b", "n", "cka")
TABLE_FLOAT_FORMAT = ".4f"  # Markdown only; the CSV keeps full precision
# With several fine-tuning replicates, the tables' replicated rows say which replicate they are ("0", "1", ...)
# or which summary of them ("mean", "sd"); every other row leaves the column empty.
REPLICATE_COLUMN = "replicate"
REPLICATE_SUMMARIES = ("mean", "sd")


def with_bracketed_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """Each metric that has ``<metric>_low``/``_high`` columns as one text column ``0.9805 [0.9735, 0.9857]``
    (floats to TABLE_FLOAT_FORMAT; the bare value where the interval is NaN), its interval columns dropped."""
    table = table.copy()
    for metric in [c for c in table.columns if c + LOW in table.columns and c + HIGH in table.columns]:
        table[metric] = [
            f"{v:{TABLE_FLOAT_FORMAT}}" + ("" if pd.isna(lo) or pd.isna(hi)
                                            else f" [{lo:{TABLE_FLOAT_FORMAT}}, {hi:{TABLE_FLOAT_FORMAT}}]")
            for v, lo, hi in zip(table[metric], table[metric + LOW], table[metric + HIGH], strict=True)]
        table = table.drop(columns=[metric + LOW, metric + HIGH])
    return table


def markdown_table(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """``# title``, one bullet per note, then the table (floats to four places, intervals in brackets beside
    their metric: :func:`with_bracketed_intervals`)."""
    text = f"# {title}\n\n" + "".join(f"- {note}\n" for note in notes) + "\n"
    return text + with_bracketed_intervals(table).to_markdown(index=False, floatfmt=TABLE_FLOAT_FORMAT) + "\n"


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike | None = None,
                title: str = "", notes: Sequence[str] = ()) -> None:
    """A results table as CSV (full precision) and, with ``md_path``, as Markdown with a title and notes."""
    with atomic_write(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    if md_path is not None:
        write_text(md_path, markdown_table(table, title, notes))


def read_baseline(path: str | os.PathLike) -> pd.DataFrame:
    return _read_csv(path, ("distance", "accuracy"), "baseline metrics")


def read_classifiers(path: str | os.PathLike) -> pd.DataFrame:
    return _read_csv(path, CLASSIFIER_COLUMNS, "classifier table")


def read_embedding_quality(path: str | os.PathLike, columns: Sequence[str] = EMBEDDING_COLUMNS) -> pd.DataFrame:
    return _read_csv(path, columns, "embedding-quality table")


def read_cka(path: str | os.PathLike) -> pd.DataFrame:
    """cka.csv: every ordered pair of layers exactly once; CKA a number or empty (NaN: a layer constant on the
    subsample, where CKA is undefined), never infinite."""
    table = _read_csv(path, CKA_COLUMNS, "CKA table")
    pairs = ["features_a", "layer_a", "features_b", "layer_b"]
    if table.duplicated(pairs).any():
        raise ArtifactError(f"CKA table {path}: a pair of layers appears twice")
    try:
        values = table["cka"].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"CKA table {path}: column 'cka' must hold numbers: {exc}") from exc
    if np.isinf(values).any():
        raise ArtifactError(f"CKA table {path}: column 'cka' holds an infinite value")
    return table
def first_replicate(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a classifier or embedding-quality table that one replicate would give: replicate 0's rows
    and the unreplicated ones (the whole table when it has no REPLICATE_COLUMN)."""
    if REPLICATE_COLUMN not in table.columns:
        return table
    column = table[REPLICATE_COLUMN]
    keep = column.isna() | (column.astype(str).isin(["", "0"]))
    return table[keep].drop(columns=REPLICATE_COLUMN).reset_index(drop=True)
