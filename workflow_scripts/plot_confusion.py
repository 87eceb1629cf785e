import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.figures import plot_confusion  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake)  # noqa: F821
plot_confusion(
    snakemake.input.predictions,  # noqa: F821
    snakemake.input.images,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    dpi=snakemake.params.dpi,  # noqa: F821
)
