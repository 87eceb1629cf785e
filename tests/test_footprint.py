"""Job sizes from the data: the memory and time requests of ingest and baseline, to the megabyte and minute."""

import pytest

from embedscope.footprint import Extent, baseline_resources, dataset_extent, ingest_resources


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
