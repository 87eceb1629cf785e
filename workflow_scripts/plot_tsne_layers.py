import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.figures import plot_tsne_layers  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake)  # noqa: F821
plot_tsne_layers(
    list(snakemake.input.csv),  # noqa: F821
    list(snakemake.input.meta),  # noqa: F821
    snakemake.output[0],  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    extractor=snakemake.wildcards.extractor,  # noqa: F821
    layers=snakemake.params.layers,  # noqa: F821
    dpi=snakemake.params.dpi,  # noqa: F821
)
