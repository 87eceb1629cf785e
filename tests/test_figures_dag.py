"""DAG-level checks of the t-SNE and figure rules on a finished small run (fixture `small_run`, conftest.py)."""

from __future__ import annotations

import re

import pytest
from conftest import SMALL_CONFIG, run_snakemake

from embedscope.layers import EXTRACTOR_LAYERS

pytestmark = pytest.mark.e2e

DATASET = next(iter(SMALL_CONFIG["datasets"]))
FIGURE = f"results/figures/{DATASET}/tsne/resnet18/layer4.png"
UPSTREAM = ("results/data/", "results/features/", "results/models/", "results/baseline/")


def scheduled(output: str) -> tuple[list[str], list[str]]:
    """(rule names, output paths) of the jobs a dry run lists."""
    rules = re.findall(r"^(?:local)?rule (\w+):", output, flags=re.M)
    outputs = []
    for line in re.findall(r"^\s+output: (.+)$", output, flags=re.M):
        outputs += [p.strip() for p in line.split(",")]
    return rules, outputs


def test_one_figure_is_up_to_date(small_run):
    result = run_snakemake(small_run, "-n", FIGURE)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_forcing_one_figure_runs_only_its_rule(small_run):
    result = run_snakemake(small_run, "-n", "--force", FIGURE)
    rules, outputs = scheduled(result.stdout + result.stderr)
    assert rules == ["plot_tsne"] and outputs == [FIGURE], (rules, outputs)


def test_new_perplexity_reruns_only_tsne_and_what_reads_it(small_run, tmp_path):
    # A second config file rather than `--config tsne={perplexity: 30}`: Snakemake parses nested --config
    # values as strings ('30'), which the schema rejects. The later --configfile replaces the fixture's.
    extra = tmp_path / "perplexity.yaml"
    extra.write_text(f"tsne: {{perplexity: 30, n_iter: {SMALL_CONFIG['tsne']['n_iter']}}}\n")
    result = run_snakemake(small_run, "-n", "--configfile", str(small_run / "config.yaml"), str(extra))
    rules, outputs = scheduled(result.stdout + result.stderr)
    assert "embed_tsne" in rules and "plot_tsne" in rules and "plot_tsne_thumbs" in rules, rules
    assert not [p for p in outputs if p.startswith(UPSTREAM)], outputs
    forbidden = {"ingest_dataset", "extract_features", "finetune_resnet18",
                 "compute_baseline", "plot_activations", "plot_activation_input", "plot_training",
                 "plot_top_losses", "plot_confusion"}
    assert not forbidden & set(rules), sorted(forbidden & set(rules))
    expected_tsne = sum(len(EXTRACTOR_LAYERS[extractor]) for extractor in SMALL_CONFIG["extractors"])
    assert rules.count("embed_tsne") == expected_tsne


def test_new_cka_points_reruns_only_the_layer_similarity_table_and_heatmap(small_run, tmp_path):
    extra = tmp_path / "cka.yaml"
    metrics = {**SMALL_CONFIG["metrics"], "cka_points": 150}
    extra.write_text(f"metrics: {metrics}\n")
    result = run_snakemake(small_run, "-n", "--configfile", str(small_run / "config.yaml"), str(extra))
    rules, outputs = scheduled(result.stdout + result.stderr)
    assert sorted(set(rules) - {"all"}) == ["layer_similarity", "plot_cka"] and len(rules) <= 3, rules
    assert sorted(outputs) == [f"results/figures/{DATASET}/cka.png", f"results/metrics/{DATASET}/cka.csv",
                               f"results/metrics/{DATASET}/cka.md"], outputs
