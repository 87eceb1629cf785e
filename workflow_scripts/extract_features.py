import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.features import extract_features
from embedscope.runtime import start_job

device = start_job(snakemake)
extract_features(
    snakemake.input.images,
    snakemake.output.store,
    snakemake.wildcards.extractor,
    snakemake.params.settings,
    batch_size=snakemake.params.batch_size,
    device=device,
    resources=snakemake.params.resources,
    seed=snakemake.params.seed,
    model_path=snakemake.input.model or None,
    shard=snakemake.params.get("shard"),  # (i, k) in a shard job
)
