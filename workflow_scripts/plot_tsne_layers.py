import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_tsne_layers
from embedscope.runtime import start_job

start_job(snakemake)
plot_tsne_layers(
    list(snakemake.input.csv),
    list(snakemake.input.meta),
    snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    extractor=snakemake.wildcards.extractor,
    layers=snakemake.params.layers,
    dpi=snakemake.params.dpi,
)
