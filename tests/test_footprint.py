"""Job sizes from the data: the memory and time requests of ingest and baseline, to the megabyte and minute."""

import math

import pytest

from embedscope.footprint import (
    Extent,
    baseline_resources,
    dataset_extent,
    extraction_resources,
    extractor_widths,
    finetune_resources,
    ingest_resources,
    scattering_width,
    stored_extent,
)
from embedscope.layers import BODY_CHANNELS, BODY_LAYERS

MNIST5K = stored_extent(dataset_extent({"source": "embedded"}), {"n_train": 3000, "n_test": 2000})
CIFAR10 = dataset_extent({"source": "torchvision", "name": "CIFAR10"})


def test_extent_of_each_source():
    assert dataset_extent({"source": "embedded"}) == Extent(5000, (28, 28, 1), 10, held_per_pixel=10)
    assert dataset_extent({"source": "torchvision", "name": "CIFAR10"}) == Extent(
        60000, (32, 32, 3), 10, 3, n_test=10000)
    assert dataset_extent({"source": "imagefolder", "image_size": [64, 48]}, 20000, 7) == Extent(
        20000, (64, 48, 3), 7, 0)
    assert dataset_extent({"source": "imagefolder"}, 5, 2).image_shape == (1024, 1024, 3)


@pytest.mark.parametrize(("settings", "threads", "expected"), [
    # max(1000, 850 + 10 x 5,000 x 784 B = 39.2 MB); 5 + 5,000 x (2 ms + 7.84 us) s / 60 = 5 + ceil(0.17)
    ({"source": "embedded"}, 1, {"mem_mb": 1000, "runtime": 6}),
    # 850 + 3 x 60,000 x 3,072 B = 552.96 MB; 5 + ceil(60,000 x 2.03072 ms / 60 s = 2.03)
    ({"source": "torchvision", "name": "CIFAR10"}, 1, {"mem_mb": 1403, "runtime": 8}),
])
def test_ingest_of_in_memory_sources(settings, threads, expected):
    assert ingest_resources(dataset_extent(settings), threads) == expected


def test_ingest_of_an_image_folder_grows_with_files_and_threads_not_pixels_held():
    extent = dataset_extent({"source": "imagefolder", "image_size": [32, 32]}, 20000, 10, largest_file=5000)
    assert extent.largest_file == 5000
    # 850 + ceil((20,000 x 1 kB + 9 x 8192^2 B (the decode budget) + 4 x threads x (5,000 + 3,072) B + 6 MB) / 1e6);
    # 5 + ceil(20,000 x 2.03072 ms / threads / 60)
    assert ingest_resources(extent, 1) == {"mem_mb": 850 + 631, "runtime": 6}
    assert ingest_resources(extent, 4) == {"mem_mb": 850 + 631, "runtime": 6}
    bigger = dataset_extent({"source": "imagefolder", "image_size": [32, 32]}, 200000, 10, largest_file=5000)
    assert ingest_resources(bigger, 4) == {"mem_mb": 850 + 811, "runtime": 7}
    # files of up to 50 MB, 16 of them read ahead: 800 MB more
    large_files = dataset_extent({"source": "imagefolder", "image_size": [32, 32]}, 20000, 10, 50_000_000)
    assert ingest_resources(large_files, 4) == {"mem_mb": 850 + 1431, "runtime": 6}


def test_baseline_reads_chunks():
    # max(1000, 850 + (5,000 x 24 + 4 x 10 x 784 x 8 + 6 x 8 x 2e6) / 1e6 = 850 + ceil(96.37));
    # 5 + ceil(5,000 x 35.7 us / 60)
    assert baseline_resources(dataset_extent({"source": "embedded"})) == {"mem_mb": 1000, "runtime": 6}
    cifar = dataset_extent({"source": "torchvision", "name": "CIFAR10"})
    # max(1000, 850 + ceil(1.44 + 0.98 + 96)); 5 + ceil(60,000 x (20 us + 61.44 us) = 4.9 s / 60)
    assert baseline_resources(cifar) == {"mem_mb": 1000, "runtime": 6}


# ---- tables, t-SNE, explorer and image figures ------------------------------------------------------------

EMBEDDED = {"source": "embedded", "n_train": 3000, "n_test": 2000}
MNIST = {"source": "torchvision", "name": "MNIST"}
CIFAR = {"source": "torchvision", "name": "CIFAR10", "max_points": 3200}
ALL = ["scattering", "resnet18", "resnet18_finetuned"]


def test_splits_points_and_layer_widths():
    from embedscope.footprint import layer_widths, scattering_width, split_sizes, tsne_points

    assert split_sizes(EMBEDDED, dataset_extent(EMBEDDED)) == (3000, 2000)
    assert split_sizes({"source": "embedded", "n_test": 1000}, dataset_extent(EMBEDDED)) == (4000, 1000)
    assert split_sizes(MNIST, dataset_extent(MNIST)) == (60000, 10000)
    assert split_sizes({**MNIST, "n_train": 20000}, dataset_extent(MNIST)) == (20000, 10000)
    # MNIST's layout under its own root holding 3,500 images, 500 of them test (counted from its headers)
    small = dataset_extent({**MNIST, "root": "/data"}, n_files=3500, n_test=500)
    assert small == Extent(3500, (28, 28, 1), 10, held_per_pixel=3, n_test=500)
    assert split_sizes(MNIST, small) == (3000, 500) and tsne_points(MNIST, small) == 500
    assert tsne_points(CIFAR, dataset_extent(CIFAR)) == 3200 and tsne_points(MNIST, dataset_extent(MNIST)) == 10000
    # 1 x (1 + 16 + 64) x 7 x 7 and 3 x 81 x 8 x 8; J = 3, L = 4: 1 + 12 + 16 x 3 = 61 coefficients, 4 x 4 (ceil 28/8)
    assert scattering_width((28, 28, 1), 2, 8) == 3969 and scattering_width((32, 32, 3), 2, 8) == 15552
    assert scattering_width((28, 28, 1), 3, 4) == 61 * 16
    widths = layer_widths(ALL, dataset_extent(CIFAR))
    assert widths["scattering", "scattering"] == 15552 and widths["resnet18", "conv1"] == 64
    assert widths["resnet18_finetuned", "head_pool"] == 1024 and widths["resnet18_finetuned", "softmax"] == 10
    assert len(widths) == 13 and max(widths.values()) == 15552


def test_classifier_size_by_hand():
    from embedscope.footprint import JOB_FLOOR_MB, classifier_resources

    extent = dataset_extent(EMBEDDED)
    # kNN alone on pixels (784) and a 100-wide layer: 850 + 1.25 x (4 x 5,000 x 784 + 16e6) / 1e6 = 890 -> the floor;
    # 5 + ceil(1.25 x (30 + 2,000 x 3,000 x (784 + 100) x 1 ns) / 60 = 0.736)
    assert classifier_resources(extent, 3000, 2000, [100], {"classifiers": ["knn"]}) == {"mem_mb": JOB_FLOOR_MB,
                                                                                         "runtime": 6}
    assert JOB_FLOOR_MB == 1000
    # the full study, all classifiers, CIFAR-10's scattering (15,552): 4 x 60,000 x 15,552 (the set in float32,
    # standardised in place, float32 for lbfgs too) + 2 x 64 MiB (the scaler's float64 block and running sum)
    # + 100 trees x 50,000 x 144 B + 16e6 = 4,602.7 MB -> 850 + ceil(1.25 x 4,602.7); scikit-learn's own
    # StandardScaler made the measured peak 10,671 MB (bench/bench_standardise.py: 9,797 -> 3,317 MB for the fit)
    widths = [15552, 64, 512, 1024, 10]
    assert classifier_resources(dataset_extent(CIFAR), 50000, 10000, widths, {}, 4) == {"mem_mb": 6604,
                                                                                      "runtime": 94}
    # MNIST: 4 x 70,000 x 3,969 + 2 x 64 MiB + 100 x 60,000 x 144 + 16e6 = 2,125.5 MB -> 850 + 2,657
    assert classifier_resources(dataset_extent(MNIST), 60000, 10000, [3969], {}, 4) == {"mem_mb": 3507,
                                                                                      "runtime": 35}
    # the measured 10,000 / 10,000 MNIST run (peak 1,032 MB): 4 x 20,000 x 3,969 + 2 x 64 MiB
    # + 100 x 10,000 x 144 + 16e6
    assert classifier_resources(dataset_extent(MNIST), 10000, 10000, [3969], {}, 2)["mem_mb"] == 1615
    # a big forest on narrow sets: the pixels (784) are the widest; 4 x 3,000 x 784 + 1,000 x 3,000 x 144 + 16e6
    forest = classifier_resources(extent, 3000, 0, [10], {"classifiers": ["random_forest"],
                                                         "random_forest_trees": 1000})
    assert forest["mem_mb"] == 850 + 572


def test_embedding_tsne_explorer_and_figure_sizes_by_hand():
    from embedscope import metrics
    from embedscope.footprint import (
        METRICS_BLOCK_BYTES,
        QUALITY_BLOCK_BYTES,
        WORKING_MEMORY_MB,
        embedding_resources,
        explorer_resources,
        thumbnail_figure_resources,
        top_losses_resources,
        tsne_resources,
    )

    assert (METRICS_BLOCK_BYTES, QUALITY_BLOCK_BYTES, WORKING_MEMORY_MB) == (
        metrics.BLOCK_BYTES, metrics.QUALITY_BLOCK_BYTES, metrics.WORKING_MEMORY_MB)
    assert embedding_resources(10, 10, 10, [4]) == {"mem_mb": 1000, "runtime": 6}
    # full MNIST: 4 x 70,000 x 3,969 + 8 x 10,000 x 3,969 + 96 MiB + 2 x 128 MB + 3 x 64 MiB = 1,986.8 MB;
    # 5 + ceil(1.25 x (30 + 5 layers x 1e8 x 400 ns + 1e8 x 3 x 5,579 x 0.1 ns + ...) / 2 / 60)
    widths = [3969, 64, 512, 1024, 10]
    assert embedding_resources(60000, 10000, 10000, widths, 10000, 2) == {"mem_mb": 3334, "runtime": 10}
    # quality capped at 2,000 of the 10,000 points: the q^2 terms shrink 25-fold
    assert embedding_resources(60000, 10000, 10000, widths, 2000, 2) == {"mem_mb": 2771, "runtime": 6}
    # the measured 10,000 / 10,000 MNIST run (peak 953 MB)
    assert embedding_resources(10000, 10000, 10000, [3969], 10000, 2) == {"mem_mb": 2342, "runtime": 8}
    # t-SNE of 10,000 points of a 3,969-wide layer: 4 x 10,000 x 3,969 x (1 + 1 + 4) + 256 MB + 160 MB = 1,368.6 MB
    assert tsne_resources(10000, 10000, 3969, 50, 500, 2) == {"mem_mb": 2561, "runtime": 7}
    # explorer, 10,000 MNIST points x 13 maps: 10,000 x (784 + 4 x 1,668 + 13 x 320) = 116.2 MB -> the floor
    assert explorer_resources(dataset_extent(MNIST), 10000, 13) == {"mem_mb": 1000, "runtime": 6}
    # 60,000 CIFAR-10 points: 60,000 x (3,072 + 4 x 6,244 + 4,160) = 1,932.5 MB
    assert explorer_resources(dataset_extent(CIFAR), 60000, 13)["mem_mb"] == 850 + 2416
    # thumbnails: canvas 1.6 x 20 x sqrt(10,000) = 3,200 px; 10,000 x (784 + 4,800) + 3,200^2 x 100 = 1,079.8 MB
    assert thumbnail_figure_resources(dataset_extent(MNIST), 10000, 20) == {"mem_mb": 2200, "runtime": 6}
    # top losses: 10,000 x 15 x 24 + 9 x 784 x 8 + 50e6 = 53.7 MB -> the floor
    assert top_losses_resources(dataset_extent(MNIST), 10000) == {"mem_mb": 1000, "runtime": 6}


def test_stored_extent_and_layer_widths():
    assert MNIST5K == Extent(5000, (28, 28, 1), 10, 10)
    assert stored_extent(CIFAR10, {"n_train": 1000, "n_test": 500}).n_images == 1500
    assert stored_extent(CIFAR10, {"n_train": 100000, "n_test": 500}).n_images == 60000
    assert stored_extent(CIFAR10, {"n_train": None, "n_test": 500}).n_images == 60000
    assert scattering_width((28, 28, 1), 2, 8) == 3969  # 1 x (1 + 16 + 64) x 7 x 7
    assert scattering_width((32, 32, 3), 2, 8) == 3 * 81 * 8 * 8
    assert scattering_width((32, 32, 1), 3, 4) == 1 * (1 + 12 + 48) * 4 * 4
    assert extractor_widths("scattering", CIFAR10, {"J": 2, "L": 8}) == (15552,)
    assert extractor_widths("resnet18", CIFAR10) == tuple(BODY_CHANNELS[layer] for layer in BODY_LAYERS)
    assert extractor_widths("resnet18_finetuned", CIFAR10) == (512, 1024, 512, 10)


def test_extraction_of_the_default_study():
    # held = 5,000 x 24 + 2,551 x 784 (a 2 MB block) + 256 x 3 x 784 x 4 + 256 x 100 x 784 x 4
    #        + 2 x (8 x 2 MB + 256 x 1,216 x 4) + 4 x 11,704,384 params = 166.1 MB; 1,100 + ceil(1.5 x 166.1)
    # runtime: 10 + ceil(4 x 5,000 x (5 ms + 784 x 1 us) / 60); scattering 10 + ceil(4 x 5,000 x 784 x 12 us / 60)
    assert extraction_resources(MNIST5K, "resnet18", 256) == {"mem_mb": 1350, "runtime": 12}
    assert extraction_resources(MNIST5K, "scattering", 256, {"J": 2, "L": 8}) == {"mem_mb": 1246, "runtime": 14}
    assert extraction_resources(MNIST5K, "resnet18_finetuned", 256) == {"mem_mb": 1328, "runtime": 12}


def test_extraction_grows_with_resize_and_batch_not_images_and_shards_split_the_time():
    # a million images add only their labels (24 MB); a shard job runs a quarter of the rows; 224x224 inputs
    # hold 64 times the activations of 28x28 ones per image
    big = Extent(1_000_000, (28, 28, 1), 10, 0)
    # 10 + ceil(4 x rows x 5.784 ms / 60): rows 1,000,000 and 250,000
    assert extraction_resources(big, "resnet18", 256) == {"mem_mb": 1385, "runtime": 396}
    assert extraction_resources(big, "resnet18", 256, shards=4, job="shard") == {"mem_mb": 1385, "runtime": 107}
    assert extraction_resources(big, "resnet18", 256, shards=4, job="gather") == {"mem_mb": 1224, "runtime": 27}
    # 10 + ceil(4 x 60,000 x (5 ms + 50,176 x 1 us) / 60); scattering 10 + ceil(4 x 60,000 x 3,072 x 12 us / 60)
    assert extraction_resources(CIFAR10, "resnet18", 256, resize=224) == {"mem_mb": 9166, "runtime": 231}
    assert extraction_resources(CIFAR10, "resnet18", 64, resize=224) == {"mem_mb": 3209, "runtime": 231}
    assert extraction_resources(CIFAR10, "scattering", 256, {"J": 2, "L": 8}, cuda=True) == {
        "mem_mb": 4145, "runtime": 158}


def test_finetuning():
    # held = 5,000 x 784 + 5,000 x 32 + 6 x 4 x 11,709,514 + 128 x 300 x 784 x 4 + 256 x 103 x 784 x 4 + 2 MB
    #      = 490.4 MB; 1,100 + ceil(1.5 x 490.4);
    # 10 + ceil(4 x 5,000 x (9 x (training 1 ms + 784 x 3.75 us + inference 5 ms + 784 x 1 us) + 5.784 ms) / 60)
    assert finetune_resources(MNIST5K, 128, 2, 7) == {"mem_mb": 1836, "runtime": 42}
    paper_mnist = dataset_extent({"source": "torchvision", "name": "MNIST"})
    assert finetune_resources(paper_mnist, 128, 4, 5) == {"mem_mb": 1915, "runtime": 446}
    assert finetune_resources(paper_mnist, 128, 4, 5, cuda=True, workers=8) == {"mem_mb": 6815, "runtime": 446}
    assert finetune_resources(CIFAR10, 128, 4, 5, resize=64) == {"mem_mb": 3396, "runtime": 963}
    # the collapse probe: + 1,000 x 784 (its images) + 3,000 x 8,192 B (their and the test split's layers)
    #      = 515.8 MB -> 1,100 + ceil(1.5 x 515.8); + 9 epochs x 1,000 x 5.784 ms of inference: 10 + ceil(34.6)
    assert finetune_resources(MNIST5K, 128, 2, 7, collapse_train=1000, collapse_test=2000) == {
        "mem_mb": 1874, "runtime": 45}


def test_cka_size_by_hand():
    from embedscope import similarity
    from embedscope.footprint import CKA_BLOCK_BYTES, cka_resources

    assert CKA_BLOCK_BYTES == similarity.GRAM_BLOCK_BYTES
    # the default study: pixels (784) and 13 layers, 2,000 of 2,000 test images, 5,000 rows:
    # 15 x 8 x 2,000^2 (14 Grams and one product) + 4 x 2,000 x 3,969 + min(64 MiB, 8 x 2,000 x 3,969)
    # + 5,000 x 24 + 16e6 = 591.4 MB -> 850 + ceil(1.25 x 591.4); 5 + ceil(1.25 x (10 + (2,000^2 x 7,519 x 1 ns
    # + 98 x 2,000^2 x 1 ns) / 2 + 5,000 x 7,519 x 4 B / 100 MB/s) / 60)
    widths = [784, 3969, *BODY_CHANNELS.values(), 512, 1024, 512, 10]
    assert cka_resources(5000, 2000, 2000, widths, 2) == {"mem_mb": 1590, "runtime": 6}
    # a test split smaller than cka_points: its 200 images -> the floor
    assert cka_resources(500, 200, 2000, widths, 2) == {"mem_mb": 1000, "runtime": 6}
    # full CIFAR-10 (pixels 3,072, scattering 15,552): 480e6 + 4 x 2,000 x 15,552 + 64 MiB + 60,000 x 24 + 16e6
    cifar = [3072, 15552, *widths[2:]]
    assert cka_resources(60000, 10000, 2000, cifar, 2) == {"mem_mb": 1712, "runtime": 8}
    # 10,000 points: the Grams grow with the square, 15 x 800 MB
    assert cka_resources(70000, 10000, 10000, widths, 2)["mem_mb"] == 16155
    # with fine-tuning, the default study's table also holds the fine-tuned body's conv1 ... layer3 (7 more sets,
    # 704 values) and runs the body over the 2,000 images on the CPU, 256 at a time, which makes it a torch job:
    # 22 x 8 x 2,000^2 + 31.752e6 + 63.504e6 + 0.12e6 + 16e6 = 815.376 MB -> ceil(1.25 x 815.376) = 1,020, and
    # 256 x 784 (uint8 batch) + 256 x 3 x 784 x 4 + 256 x 100 x 784 x 4 + 8 x (11,176,512 + 527,872) (the model
    # twice) + 2 x 2,000 x 1,216 x 4 (the pooled body) = 195.98 MB -> ceil(1.5 x 195.98) = 294: 1,100 + 1,020 + 294;
    # runtime 5 + ceil(1.25 x (10 + (2,000^2 x 8,731 + 21^2 / 2 x 2,000^2) x 1 ns / 2 + 5,000 x 8,731 x 4 B / 100 MB/s)
    # / 60) + ceil(4 x 2,000 x (5 ms + 784 x 1 us) / 60) = 6 + 1
    body = [64, 64, 64, 64, 64, 128, 256]
    assert cka_resources(5000, 2000, 2000, widths + body, 2, network_input=(28, 28, 1), batch_size=256) == {
        "mem_mb": 2414, "runtime": 7}
    # at 224 x 224, the forward pass's 256 x 100 x 50,176 x 4 B dominate, as in extraction
    forward = 256 * 224 * 224 * 4 * 103 + 256 * 784 + 8 * (11_176_512 + 527_872) + 2 * 2000 * 1216 * 4
    resized = cka_resources(5000, 2000, 2000, widths + body, 2, network_input=(28, 28, 1), resize=224)
    assert resized["mem_mb"] == 1100 + 1020 + math.ceil(1.5 * forward / 1e6)
