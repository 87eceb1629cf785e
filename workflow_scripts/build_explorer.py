import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.explorer import build_explorer
from embedscope.runtime import start_job

start_job(snakemake)
build_explorer(
    snakemake.output.html,
    snakemake.input.images,
    [(e, layer, csv) for (e, layer), csv in zip(snakemake.params.maps, snakemake.input.tsne, strict=True)],
    quality_csv=snakemake.input.quality,
    predictions_csv=snakemake.input.predictions[0] if snakemake.input.predictions else None,
    dataset=snakemake.wildcards.dataset,
    trustworthiness_k=snakemake.params.trustworthiness_k,
)
