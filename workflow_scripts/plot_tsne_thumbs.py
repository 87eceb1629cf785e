import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_tsne_thumbs
from embedscope.runtime import start_job

start_job(snakemake)
plot_tsne_thumbs(
    snakemake.input.csv,
    snakemake.input.meta,
    snakemake.input.images,
    snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    extractor=snakemake.wildcards.extractor,
    layer=snakemake.wildcards.layer,
    thumbnail_size=snakemake.params.thumbnail_size,
    dpi=snakemake.params.dpi,
)
