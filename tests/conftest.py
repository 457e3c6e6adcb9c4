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


def load_example(name: str):
    """``examples/{name}.py`` imported as a module, to run in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"{name}_example", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(example, *args) -> int:
    """``examples/X.py --smoke ... args`` as its command line runs it, in this process (one
    thread, CPU); the exit status. The caller's torch thread count is restored."""
    threads = torch.get_num_threads()
    try:
        return example.cli.run(
            example.main, ["--smoke", "--no-progress", "--threads", "1", "--device", "cpu", *args]
        )
    finally:
        torch.set_num_threads(threads)
