import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.datasets import ingest_dataset  # noqa: E402
from embedscope.runtime import setup_logging  # noqa: E402

setup_logging()
ingest_dataset(
    snakemake.params.settings,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    resources=snakemake.params.resources,  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
)
