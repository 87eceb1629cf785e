import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.runtime import start_job  # noqa: E402
from embedscope.tsne import run_tsne  # noqa: E402

device = start_job(snakemake)  # noqa: F821
run_tsne(
    snakemake.input.features,  # noqa: F821
    snakemake.wildcards.layer,  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    snakemake.output.meta,  # noqa: F821
    predictions=snakemake.input.predictions or None,  # noqa: F821
    max_points=snakemake.params.max_points,  # noqa: F821
    method=snakemake.params.method,  # noqa: F821
    perplexity=snakemake.params.perplexity,  # noqa: F821
    pca_components=snakemake.params.pca_components,  # noqa: F821
    n_iter=snakemake.params.n_iter,  # noqa: F821
    ints_in_interval=snakemake.params.ints_in_interval,  # noqa: F821
    neighbors=snakemake.params.neighbors,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    n_jobs=snakemake.threads,  # noqa: F821
    info={"dataset": snakemake.wildcards.dataset, "extractor": snakemake.wildcards.extractor},  # noqa: F821
)
