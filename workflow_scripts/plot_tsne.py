import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_tsne
from embedscope.runtime import start_job

start_job(snakemake)
plot_tsne(
    snakemake.input.csv,
    snakemake.input.meta,
    snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    extractor=snakemake.wildcards.extractor,
    layer=snakemake.wildcards.layer,
    dpi=snakemake.params.dpi,
)
