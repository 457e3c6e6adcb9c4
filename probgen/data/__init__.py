"""Data sets (MNIST bundled, others via torchvision), preprocessing and batching."""

from probgen.data.datasets import (BUNDLED_MNIST, default_root, image_splits, load_images,
                                   unpack_bundled_mnist)
from probgen.data.corrupt import CORRUPTIONS, GaussianNoise, RandomBlocks, make_corruption
from probgen.data.masks import MISSING, mask_inputs, quadrant_mask, quadrant_task
from probgen.data.preprocess import (binarize_sample, dynamic_binarization, split_indices,
                                     static_binarize, to_unit_interval)
from probgen.data.tensors import TensorData

__all__ = [
    "BUNDLED_MNIST", "CORRUPTIONS", "GaussianNoise", "MISSING", "RandomBlocks", "make_corruption", "TensorData", "binarize_sample", "default_root",
    "dynamic_binarization", "image_splits", "load_images", "mask_inputs", "quadrant_mask",
    "quadrant_task", "split_indices", "static_binarize", "to_unit_interval",
    "unpack_bundled_mnist",
]
