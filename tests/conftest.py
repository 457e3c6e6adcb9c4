import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist_small():
    """A small slice of the bundled MNIST: 512 train / 256 val / 256 test."""
    from probgen.data import image_splits

    return image_splits("mnist", val_size=256, limit=512, seed=0)


QUIET = dict(progress=False, verbose=False)
