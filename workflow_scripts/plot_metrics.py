import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.metrics import plot_metrics  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake)  # noqa: F821
plot_metrics(
    snakemake.input.classifiers,  # noqa: F821
    snakemake.input.embeddings,  # noqa: F821
    snakemake.output.accuracy,  # noqa: F821
    snakemake.output.depth,  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    dpi=snakemake.params.dpi,  # noqa: F821
    weights=snakemake.params.weights,  # noqa: F821
)
