import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from embedscope.figures import plot_activations
from embedscope.runtime import start_job

start_job(snakemake)
plot_activations(
    snakemake.input.images,
    snakemake.output[0],
    dataset=snakemake.wildcards.dataset,
    extractor=snakemake.wildcards.extractor,
    layer=snakemake.wildcards.layer,
    position=snakemake.params.position,
    weights=snakemake.params.weights,
    resize=snakemake.params.resize,
    seed=snakemake.params.seed,
    resources=snakemake.params.resources,
    model_path=snakemake.input.model or None,
    dpi=snakemake.params.dpi,
)
