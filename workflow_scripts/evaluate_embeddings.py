import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.metrics import evaluate_embeddings  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake)  # noqa: F821
evaluate_embeddings(
    snakemake.params.extractors,  # noqa: F821
    list(snakemake.input.stores),  # noqa: F821
    list(snakemake.input.tsne),  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    snakemake.output.md,  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    settings=snakemake.params.metrics,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    weights=snakemake.params.weights,  # noqa: F821
)
