import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.baseline import compute_baseline  # noqa: E402
from embedscope.runtime import setup_logging  # noqa: E402

setup_logging()
compute_baseline(
    snakemake.input[0],  # noqa: F821
    snakemake.output.metrics,  # noqa: F821
    snakemake.output.figure,  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    dpi=snakemake.params.dpi,  # noqa: F821
)
