"""Selective search and the per-split proposal cache."""

import numpy as np
import pytest

from minircnn.data import toyvoc
from minircnn.data.voc import VOCDataset
from minircnn.ops.boxes import box_iou
from minircnn.proposals import cache
from minircnn.proposals.recall import recall_table
from minircnn.proposals.selective_search import initial_regions, selective_search


def rectangles_image():
    image = np.full((90, 120, 3), 200, dtype=np.uint8)
    rects = [(10, 8, 39, 47), (60, 20, 109, 39), (50, 55, 79, 84)]  # x1, y1, x2, y2 inclusive
    colours = [(200, 30, 30), (30, 30, 200), (30, 160, 30)]
    for (x1, y1, x2, y2), colour in zip(rects, colours, strict=True):
        image[y1 : y2 + 1, x1 : x2 + 1] = colour
    return image, np.array(rects, dtype=np.float64)


@pytest.mark.parametrize("mode", ["single", "fast"])
def test_flat_rectangles_are_found(mode):
    image, rects = rectangles_image()
    boxes = selective_search(image, mode=mode)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4
    assert np.all(box_iou(rects, boxes).max(axis=1) >= 0.9)
    assert len(np.unique(boxes, axis=0)) == len(boxes)  # no duplicates


def test_deterministic_for_a_seed():
    image, _ = rectangles_image()
    a = selective_search(image, seed=1)
    np.testing.assert_array_equal(a, selective_search(image, seed=1))
    b = selective_search(image, seed=2)
    assert sorted(map(tuple, a)) == sorted(map(tuple, b))  # same boxes, other ranking


def test_grayscale_tiny_and_non_square():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (40, 70), dtype=np.uint8)
    assert selective_search(gray, mode="single").shape[1] == 4
    tiny = selective_search(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), min_size=1)
    assert len(tiny) >= 1 and tiny[:, 2].max() <= 7 and tiny[:, 3].max() <= 7
    wide = selective_search(rng.integers(0, 255, (30, 90, 3), dtype=np.uint8), max_proposals=5)
    assert len(wide) <= 5 and wide[:, 2].max() <= 89 and wide[:, 3].max() <= 29
    assert initial_regions(gray).shape == gray.shape


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 0, 3), np.uint8), "too small"),
        (np.zeros((4, 4, 3, 1), np.uint8), "expected an RGB"),
        (np.zeros((4, 4, 3), np.float32), "uint8"),
    ],
)
def test_invalid_input(image, match):
    with pytest.raises(ValueError, match=match):
        selective_search(image)
    with pytest.raises(ValueError, match="mode"):
        selective_search(np.zeros((4, 4, 3), np.uint8), mode="quality")


def test_cache_round_trip_and_staleness(tmp_path, monkeypatch):
    toyvoc.generate(tmp_path / "toy", seed=1, counts={"train": 2, "val": 0, "test": 0})
    ds = VOCDataset(tmp_path / "toy", split="train")
    calls = []
    original = cache._one_image
    monkeypatch.setattr(cache, "_one_image", lambda p, c: calls.append(p) or original(p, c))
    config = cache.ProposalConfig(mode="single", max_proposals=50)
    first = cache.load_or_compute(ds, config, tmp_path / "cache", jobs=1)
    assert len(calls) == 2 and all(len(p) <= 50 for p in first)
    again = cache.load_or_compute(ds, config, tmp_path / "cache", jobs=1)
    assert len(calls) == 2  # served from the cache
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    cache.load_or_compute(
        ds, cache.ProposalConfig(mode="single", max_proposals=40), tmp_path / "cache", jobs=1
    )
    assert len(calls) == 4  # other parameters: stale
    # a changed image: stale again
    path = ds[0].path
    path.write_bytes(path.read_bytes() + b"\0")
    cache.load_or_compute(
        ds, cache.ProposalConfig(mode="single", max_proposals=40), tmp_path / "cache", jobs=1
    )
    assert len(calls) == 6


def test_recall_table_by_hand():
    class Item:
        boxes = np.array([[0, 0, 9, 9], [20, 20, 29, 29], [50, 50, 59, 59]], np.float32)
        difficult = np.array([False, False, True])

    # first proposal hits gt 0 exactly; second overlaps gt 1 with IoU 0.64 (8x8 of 10x10)
    props = [np.array([[0, 0, 9, 9], [22, 22, 29, 29]], np.float32)]
    table = recall_table([Item()], props, budgets=(1, 2))
    assert table[0.5] == {1: 0.5, 2: 1.0}
    assert table[0.7] == {1: 0.5, 2: 0.5}


def test_felzenszwalb_matches_scikit_image():
    """Our Numba segmentation and scikit-image's implement the same algorithm: on an image
    without tied edge weights they give the same partition (labels may be renumbered)."""
    import skimage.segmentation

    from minircnn.proposals.felzenszwalb import felzenszwalb

    rng = np.random.default_rng(0)
    image = np.clip(rng.random((60, 80, 3)) * 0.3 + np.linspace(0, 0.7, 80)[None, :, None], 0, 1)
    ours = felzenszwalb(image, k=50, sigma=0.8, min_size=20)
    theirs = skimage.segmentation.felzenszwalb(image, scale=50, sigma=0.8, min_size=20)
    pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(ours)) == len(np.unique(theirs))
