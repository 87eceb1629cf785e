import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821

from embedscope.explorer import build_explorer  # noqa: E402
from embedscope.runtime import start_job  # noqa: E402

device = start_job(snakemake)  # noqa: F821
build_explorer(
    snakemake.output.html,  # noqa: F821
    snakemake.input.images,  # noqa: F821
    [(e, layer, csv) for (e, layer), csv in zip(snakemake.params.maps, snakemake.input.tsne, strict=True)],  # noqa: F821
    quality_csv=snakemake.input.quality,  # noqa: F821
    predictions_csv=snakemake.input.predictions[0] if snakemake.input.predictions else None,  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
)
