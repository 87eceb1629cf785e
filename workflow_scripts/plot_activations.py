import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.figures import plot_activations  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake)  # noqa: F821
plot_activations(
    snakemake.input.images,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    extractor=snakemake.wildcards.extractor,  # noqa: F821
    layer=snakemake.wildcards.layer,  # noqa: F821
    position=snakemake.params.position,  # noqa: F821
    weights=snakemake.params.weights,  # noqa: F821
    resize=snakemake.params.resize,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    resources=snakemake.params.resources,  # noqa: F821
    model_path=snakemake.input.model or None,  # noqa: F821
    dpi=snakemake.params.dpi,  # noqa: F821
)
