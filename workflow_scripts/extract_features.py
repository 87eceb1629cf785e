import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.features import extract_features  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake)  # noqa: F821
extract_features(
    snakemake.input.images,  # noqa: F821
    snakemake.output.store,  # noqa: F821
    snakemake.wildcards.extractor,  # noqa: F821
    snakemake.params.settings,  # noqa: F821
    batch_size=snakemake.params.batch_size,  # noqa: F821
    device=device,
    resources=snakemake.params.resources,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
)
