"""Import minircnn before NumPy so its OpenBLAS setting applies (see minircnn/__init__.py)."""

import pytest  # noqa: E402

import minircnn  # noqa: F401
from minircnn.data import toyvoc  # noqa: E402
from minircnn.data.voc import VOCDataset  # noqa: E402


@pytest.fixture(scope="session")
def rpn_toy(tmp_path_factory):
    """Four 96-120 px toy training images: enough for Faster R-CNN's training tests."""
    root = tmp_path_factory.mktemp("toyrpn") / "toy"
    toyvoc.generate(
        root, seed=2, counts={"train": 4, "val": 0, "test": 0}, min_size=96, max_size=120
    )
    return VOCDataset(root, split="train")
