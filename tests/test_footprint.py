"""Job sizes from the data: the memory and time requests of ingest and baseline, to the megabyte and minute."""

import pytest

from embedscope.footprint import (
    Extent,
    baseline_resources,
    dataset_extent,
    extraction_resources,
    finetune_resources,
    ingest_resources,
    layer_widths,
    scattering_width,
    stored_extent,
)
from embedscope.layers import BODY_CHANNELS, BODY_LAYERS

MNIST5K = stored_extent(dataset_extent({"source": "embedded"}), {"n_train": 3000, "n_test": 2000})
CIFAR10 = dataset_extent({"source": "torchvision", "name": "CIFAR10"})


def test_extent_of_each_source():
    assert dataset_extent({"source": "embedded"}) == Extent(5000, (28, 28, 1), 10, held_per_pixel=10)
    assert dataset_extent({"source": "torchvision", "name": "CIFAR10"}) == Extent(60000, (32, 32, 3), 10, 3)
    assert dataset_extent({"source": "imagefolder", "image_size": [64, 48]}, 20000, 7) == Extent(
        20000, (64, 48, 3), 7, 0)
    assert dataset_extent({"source": "imagefolder"}, 5, 2).image_shape == (1024, 1024, 3)


@pytest.mark.parametrize(("settings", "threads", "expected"), [
    # 600 + 10 x 5,000 x 784 B = 39.2 MB; 5 + 5,000 x (2 ms + 7.84 us) s / 60 = 5 + ceil(0.17)
    ({"source": "embedded"}, 1, {"mem_mb": 640, "runtime": 6}),
    # 600 + 3 x 60,000 x 3,072 B = 552.96 MB; 5 + ceil(60,000 x 2.03072 ms / 60 s = 2.03)
    ({"source": "torchvision", "name": "CIFAR10"}, 1, {"mem_mb": 1153, "runtime": 8}),
])
def test_ingest_of_in_memory_sources(settings, threads, expected):
    assert ingest_resources(dataset_extent(settings), threads) == expected


def test_ingest_of_an_image_folder_grows_with_files_and_threads_not_pixels_held():
    extent = dataset_extent({"source": "imagefolder", "image_size": [32, 32]}, 20000, 10)
    # 600 + (20,000 x 1 kB + 8 x threads x 3,145,728 B + 6 MB) / 1e6; 5 + ceil(20,000 x 2.03072 ms / threads / 60)
    assert ingest_resources(extent, 1) == {"mem_mb": 652, "runtime": 6}
    assert ingest_resources(extent, 4) == {"mem_mb": 727, "runtime": 6}
    bigger = dataset_extent({"source": "imagefolder", "image_size": [32, 32]}, 200000, 10)
    assert ingest_resources(bigger, 4) == {"mem_mb": 907, "runtime": 7}


def test_baseline_reads_chunks():
    # 600 + (5,000 x 24 + 4 x 10 x 784 x 8 + 6 x 8 x 2e6) / 1e6 = 600 + ceil(96.37); 5 + ceil(5,000 x 35.7 us / 60)
    assert baseline_resources(dataset_extent({"source": "embedded"})) == {"mem_mb": 697, "runtime": 6}
    cifar = dataset_extent({"source": "torchvision", "name": "CIFAR10"})
    # 600 + ceil(1.44 + 0.98 + 96); 5 + ceil(60,000 x (20 us + 61.44 us) = 4.9 s / 60)
    assert baseline_resources(cifar) == {"mem_mb": 699, "runtime": 6}


def test_stored_extent_and_layer_widths():
    assert MNIST5K == Extent(5000, (28, 28, 1), 10, 10)
    assert stored_extent(CIFAR10, {"n_train": 1000, "n_test": 500}).n_images == 1500
    assert stored_extent(CIFAR10, {"n_train": 100000, "n_test": 500}).n_images == 60000
    assert stored_extent(CIFAR10, {"n_train": None, "n_test": 500}).n_images == 60000
    assert scattering_width((28, 28, 1), 2, 8) == 3969  # 1 x (1 + 16 + 64) x 7 x 7
    assert scattering_width((32, 32, 3), 2, 8) == 3 * 81 * 8 * 8
    assert scattering_width((32, 32, 1), 3, 4) == 1 * (1 + 12 + 48) * 4 * 4
    assert layer_widths("scattering", CIFAR10, {"J": 2, "L": 8}) == (15552,)
    assert layer_widths("resnet18", CIFAR10) == tuple(BODY_CHANNELS[layer] for layer in BODY_LAYERS)
    assert layer_widths("resnet18_finetuned", CIFAR10) == (512, 1024, 512, 10)


def test_extraction_of_the_default_study():
    # held = 5,000 x 24 + 2,551 x 784 (a 2 MB block) + 256 x 3 x 784 x 4 + 256 x 100 x 784 x 4
    #        + 2 x (8 x 2 MB + 256 x 1,216 x 4) + 4 x 11,704,384 params = 166.1 MB; 1,100 + ceil(1.5 x 166.1)
    # runtime: 10 + ceil(4 x 5,000 x 784 x 1 us / 60)
    assert extraction_resources(MNIST5K, "resnet18", 256) == {"mem_mb": 1350, "runtime": 11}
    assert extraction_resources(MNIST5K, "scattering", 256, {"J": 2, "L": 8}) == {"mem_mb": 1246, "runtime": 12}
    assert extraction_resources(MNIST5K, "resnet18_finetuned", 256) == {"mem_mb": 1328, "runtime": 11}


def test_extraction_grows_with_resize_and_batch_not_images_and_shards_split_the_time():
    # a million images add only their labels (24 MB); a shard job runs a quarter of the rows; 224x224 inputs
    # hold 64 times the activations of 28x28 ones per image
    big = Extent(1_000_000, (28, 28, 1), 10, 0)
    assert extraction_resources(big, "resnet18", 256) == {"mem_mb": 1385, "runtime": 63}
    assert extraction_resources(big, "resnet18", 256, shards=4, job="shard") == {"mem_mb": 1385, "runtime": 24}
    assert extraction_resources(big, "resnet18", 256, shards=4, job="gather") == {"mem_mb": 1224, "runtime": 27}
    assert extraction_resources(CIFAR10, "resnet18", 256, resize=224) == {"mem_mb": 9166, "runtime": 211}
    assert extraction_resources(CIFAR10, "resnet18", 64, resize=224) == {"mem_mb": 3209, "runtime": 211}
    assert extraction_resources(CIFAR10, "scattering", 256, {"J": 2, "L": 8}, cuda=True) == {
        "mem_mb": 4145, "runtime": 60}


def test_finetuning():
    # held = 5,000 x 784 + 5,000 x 32 + 6 x 4 x 11,709,514 + 128 x 300 x 784 x 4 + 256 x 103 x 784 x 4 + 2 MB
    #      = 490.4 MB; 1,100 + ceil(1.5 x 490.4); 10 + ceil(4 x 5,000 x 784 x (9 x 4.75 us + 1 us) / 60)
    assert finetune_resources(MNIST5K, 128, 2, 7) == {"mem_mb": 1836, "runtime": 22}
    paper_mnist = dataset_extent({"source": "torchvision", "name": "MNIST"})
    assert finetune_resources(paper_mnist, 128, 4, 5) == {"mem_mb": 1915, "runtime": 171}
    assert finetune_resources(paper_mnist, 128, 4, 5, cuda=True, workers=8) == {"mem_mb": 6815, "runtime": 171}
    assert finetune_resources(CIFAR10, 128, 4, 5, resize=64) == {"mem_mb": 3396, "runtime": 727}
