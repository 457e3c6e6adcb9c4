"""Data sets (MNIST bundled, others via torchvision), preprocessing and batching."""

from probgen.data import recipes
from probgen.data.augment import RandomShift
from probgen.data.corrupt import CORRUPTIONS, GaussianNoise, RandomBlocks, make_corruption
from probgen.data.datasets import (
    BUNDLED_MNIST,
    default_root,
    image_splits,
    load_images,
    unpack_bundled_mnist,
)
from probgen.data.dequantize import (
    VariationalDequantizer,
    check_unit_interval,
    dequantized,
    logit_preprocess,
    logit_transform,
    to_levels,
    uniform_dequantization,
    uniform_dequantize,
)
from probgen.data.labels import UNLABELLED, labelled_split
from probgen.data.masks import MISSING, mask_inputs, quadrant_mask, quadrant_task
from probgen.data.preprocess import (
    binarize_sample,
    dynamic_binarization,
    split_indices,
    static_binarize,
    to_unit_interval,
)
from probgen.data.scenes import images_only, make_scenes, scene_splits
from probgen.data.tensors import TensorData
from probgen.data.toy import eight_gaussians, rings, toy_points, toy_splits, two_moons

__all__ = [
    "BUNDLED_MNIST",
    "CORRUPTIONS",
    "MISSING",
    "UNLABELLED",
    "GaussianNoise",
    "RandomBlocks",
    "RandomShift",
    "TensorData",
    "VariationalDequantizer",
    "binarize_sample",
    "check_unit_interval",
    "default_root",
    "dequantized",
    "dynamic_binarization",
    "eight_gaussians",
    "image_splits",
    "images_only",
    "labelled_split",
    "load_images",
    "logit_preprocess",
    "logit_transform",
    "make_corruption",
    "make_scenes",
    "mask_inputs",
    "quadrant_mask",
    "quadrant_task",
    "recipes",
    "rings",
    "scene_splits",
    "split_indices",
    "static_binarize",
    "to_levels",
    "to_unit_interval",
    "toy_points",
    "toy_splits",
    "two_moons",
    "uniform_dequantization",
    "uniform_dequantize",
    "unpack_bundled_mnist",
]
