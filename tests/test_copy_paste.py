"""Copy-paste augmentation: mask resampling and pasting worked by hand, the toy set's object
masks against its boxes, and the sampler's pasted ground truth."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from minircnn.data import toyvoc
from minircnn.data.copy_paste import JITTERED_BOXES, paste_objects, resample_mask
from minircnn.data.image import Preprocessing
from minircnn.data.sampling import HierarchicalSampler, ImageView, SamplerConfig, _box_in_view
from minircnn.data.voc import VOCDataset
from minircnn.ops.boxes import flip_boxes


def test_resample_mask_by_hand():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool
    )  # a diagonal inside the box (1, 1, 4, 4)
    # down to 2x2: pixel centres 0.5 and 1.5 of 2 map to box rows/cols 1 + 1 and 1 + 3
    assert resample_mask(mask, (1, 1, 4, 4), (2, 2)).tolist() == [[True, False], [False, True]]
    # up to 8x8: every box pixel becomes a 2x2 block
    up = resample_mask(mask, (1, 1, 4, 4), (8, 8))
    assert np.array_equal(up, np.kron(mask[1:5, 1:5], np.ones((2, 2), bool)))


def _objects(height, width, *boxes):
    """bool [G, height, width]: each object's pixels, the whole of its box (x1, y1, x2, y2)."""
    visible = np.zeros((len(boxes), height, width), bool)
    for mask, (x1, y1, x2, y2) in zip(visible, boxes, strict=True):
        mask[y1 : y2 + 1, x1 : x2 + 1] = True
    return visible


def test_paste_objects_by_hand():
    image = np.zeros((3, 10, 12), np.float32)
    visible = _objects(10, 12, (0, 0, 4, 9))  # the left five columns are an object
    patch = np.full((3, 3, 3), 7.0, np.float32)
    mask = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)  # a plus sign
    pasted = paste_objects(image, visible, [(patch, mask, 4)], np.random.default_rng(0), keep=1)
    assert pasted.labels.tolist() == [4]
    x1, y1, x2, y2 = pasted.boxes[0].astype(int)
    assert (x2 - x1 + 1, y2 - y1 + 1) == (3, 3)
    assert visible.sum() == 50  # keep 1: no pixel of the object is covered
    inside = image[:, y1 : y2 + 1, x1 : x2 + 1]
    assert np.array_equal(inside, np.where(mask, 7.0, 0.0)[None].repeat(3, 0))  # mask only
    assert image.sum() == 3 * 7.0 * mask.sum()  # nothing outside the box changed
    assert pasted.jittered.shape == (JITTERED_BOXES, 4)


def test_paste_objects_leaves_out_what_has_no_room():
    image = np.zeros((3, 8, 8), np.float32)
    visible = _objects(8, 8, (0, 0, 7, 7))  # one object covers the whole image
    patch, mask = np.ones((3, 2, 2), np.float32), np.ones((2, 2), bool)
    pasted = paste_objects(image, visible, [(patch, mask, 1)], np.random.default_rng(0), keep=1)
    assert len(pasted.boxes) == 0 and len(pasted.jittered) == 0 and not image.any()
    # keep 0.5: the 2 x 2 object may cover 4 of its 64 pixels, which leave the view
    pasted = paste_objects(image, visible, [(patch, mask, 1)], np.random.default_rng(0), keep=0.5)
    x1, y1 = pasted.boxes[0, :2].astype(int)
    assert visible.sum() == 60 and not visible[0, y1 : y1 + 2, x1 : x1 + 2].any()


def test_a_pasted_object_hides_at_most_half_of_an_annotated_one():
    # an object of 5 rows x 4 columns (20 pixels) at the left of a 5 x 8 image; a 4 x 4
    # square pasted at column x hides 4 * (4 - x) of its pixels when x < 4: 16 and 12 leave
    # fewer than 10 of the 20 (x = 0, 1), 8, 4 and 0 leave enough (x = 2, 3, 4)
    patch, mask = np.ones((3, 4, 4), np.float32), np.ones((4, 4), bool)
    columns = set()
    for seed in range(40):
        image, visible = np.zeros((3, 5, 8), np.float32), _objects(5, 8, (0, 0, 3, 4))
        pasted = paste_objects(image, visible, [(patch, mask, 1)], np.random.default_rng(seed), 0.5)
        x, y = pasted.boxes[0, :2].astype(int)
        columns.add(x)
        assert visible.sum() == 20 - 4 * max(4 - x, 0)
        square = _objects(5, 8, (x, y, x + 3, y + 3))[0]
        assert np.array_equal(visible[0], _objects(5, 8, (0, 0, 3, 4))[0] & ~square)
    assert columns == {2, 3, 4}  # every allowed place is drawn, no other


def test_several_pasted_objects_together_hide_at_most_half():
    # an object filling the left half (10 x 10) of a 10 x 20 image; four 5 x 5 squares,
    # each of which alone may hide 25 of its 100 pixels: together they keep 50 in view
    patch, mask = np.ones((3, 5, 5), np.float32), np.ones((5, 5), bool)
    stacked = 0
    for seed in range(200):
        image, visible = np.zeros((3, 10, 20), np.float32), _objects(10, 20, (0, 0, 9, 9))
        pasted = paste_objects(
            image, visible, [(patch, mask, 1)] * 4, np.random.default_rng(seed), 0.5
        )
        assert visible.sum() >= 50
        stacked += (pasted.boxes[:, 0] < 10).sum() >= 2  # two or more on the object
    assert stacked > 100


def test_keep_outside_0_1_is_refused():
    image, visible = np.zeros((3, 4, 4), np.float32), _objects(4, 4, (0, 0, 1, 1))
    with pytest.raises(ValueError, match="keep"):
        paste_objects(image, visible, [], np.random.default_rng(0), 0.0)


def test_pasted_objects_do_not_cover_one_another():
    image, visible = np.zeros((3, 6, 6), np.float32), _objects(6, 6)
    patch, mask = np.ones((3, 4, 4), np.float32), np.ones((4, 4), bool)
    pasted = paste_objects(image, visible, [(patch, mask, 1)] * 2, np.random.default_rng(0), 1)
    assert len(pasted.boxes) == 1  # any two 4 x 4 squares in 6 x 6 overlap


def test_box_in_view_by_hand():
    # input pixels twice the original's: input row/col i takes original pixel i // 2
    rows, cols = np.arange(4) // 2, np.arange(6) // 2
    visible = np.zeros((4, 6), bool)
    visible[2:4, 4:6] = True  # the input's bottom-right 2 x 2 block
    box = np.array([0, 0, 2, 1], np.float32)
    assert _box_in_view(visible, False, rows, cols, box).tolist() == [2, 1, 2, 1]
    # mirrored: that block is the unmirrored input's columns 0 and 1, original column 0
    assert _box_in_view(visible, True, rows, cols, box).tolist() == [0, 1, 0, 1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("paste") / "toy"
    toyvoc.generate(
        root, seed=4, counts={"train": 6, "val": 0, "test": 0}, min_size=96, max_size=120
    )
    return root


def test_toy_masks_match_the_boxes_also_for_a_class_subset(toy):
    for classes in (None, ("star", "box")):
        ds = VOCDataset(toy, split="train", classes=classes)
        for i in range(len(ds)):
            masks, item = ds.load_masks(i), ds[i]
            assert masks.shape == (len(item.boxes), item.height, item.width)
            for mask, box in zip(masks, item.boxes, strict=True):
                ys, xs = np.nonzero(mask)  # the annotation is the mask's tight box
                assert (xs.min(), ys.min(), xs.max(), ys.max()) == tuple(box.astype(int))


def _sampler(ds, copy_paste):
    config = SamplerConfig(rois_per_batch=32, copy_paste=copy_paste, copy_paste_objects=2)
    pre = Preprocessing((120.0,) * 3, (60.0,) * 3, short_side=96, max_side=160)
    proposals = [np.zeros((0, 4), np.float32)] * len(ds)
    return HierarchicalSampler(ds, proposals, config, pre, np.random.default_rng(1))


def test_sampler_pastes_objects_as_new_ground_truth(toy):
    ds = VOCDataset(toy, split="train")
    sampler = _sampler(ds, 1.0)
    assert len(sampler.paste_bank) == sum(len(item.boxes) for item in ds)
    grew = shrunk = 0
    for i in list(range(len(ds))) * 4:  # several pastes per image
        flip = bool(i % 2)  # as view() would make it, before pasting
        view = ImageView(i, *sampler.image(i, flip=flip), flip, ds[i].boxes, ds[i].labels)
        cached = view.image.copy()
        new_view = sampler._paste(view)
        gt_boxes, gt_labels = new_view.boxes, new_view.labels
        candidates, max_iou, _ = sampler._candidates(new_view)
        assert np.array_equal(view.image, cached)  # the cached input is not touched
        n_new = len(gt_boxes) - len(ds[i].boxes)
        grew += n_new > 0
        changed = np.argwhere((new_view.image != view.image).any(axis=0))  # [(y, x)]
        new_boxes = gt_boxes[len(ds[i].boxes) :]  # original pixels: back to the input's
        if view.flip:
            new_boxes = flip_boxes(new_boxes, ds[i].width)
        in_input = new_boxes * view.scale
        for y, x in changed:  # every changed pixel lies in a pasted object's box
            assert any(
                b[0] - 0.5 <= x <= b[2] + 0.5 and b[1] - 0.5 <= y <= b[3] + 0.5 for b in in_input
            )
        for box in in_input:  # each pasted box is the tight box of what changed in it
            x1, y1, x2, y2 = np.round(box).astype(int)
            inside = changed[
                (changed[:, 1] >= x1)
                & (changed[:, 1] <= x2)
                & (changed[:, 0] >= y1)
                & (changed[:, 0] <= y2)
            ]
            assert (inside[:, 1].min(), inside[:, 0].min()) == (x1, y1)
            assert (inside[:, 1].max(), inside[:, 0].max()) == (x2, y2)
        assert len(gt_labels) == len(gt_boxes) and set(gt_labels[len(ds[i].boxes) :]) <= set(
            range(1, ds.num_classes + 1)
        )
        assert (max_iou[: len(gt_boxes)] == 1).all()  # the ground truth leads the candidates
        assert len(candidates) >= len(gt_boxes) + n_new * JITTERED_BOXES
        shrunk += _check_partly_hidden(ds, i, view, new_view)
    assert grew >= len(ds) // 2  # most images had room for an object
    assert shrunk >= 1  # some pasted object lay over an annotated one


def _check_partly_hidden(ds, i, view, new_view) -> int:
    """Each annotated object of image i keeps at least half its pixels on the input grid
    (each input pixel taking the original pixel its centre falls in), and its box is the
    tight box of the pixels the paste left unchanged. Returns how many boxes shrank."""
    height, width = view.image.shape[1:]
    rows = np.minimum(((np.arange(height) + 0.5) / view.scale).astype(int), ds[i].height - 1)
    cols = np.minimum(((np.arange(width) + 0.5) / view.scale).astype(int), ds[i].width - 1)
    unchanged = (new_view.image == view.image).all(axis=0)  # [H', W'], the view's frame
    if view.flip:
        unchanged = unchanged[:, ::-1]  # to the unmirrored frame of rows and cols
    shrunk = 0
    for mask, old, new in zip(ds.load_masks(i), ds[i].boxes, new_view.boxes, strict=False):
        on_grid = mask[rows][:, cols]
        left = on_grid & unchanged
        assert left.sum() >= 0.5 * on_grid.sum()
        ys, xs = np.nonzero(left)
        tight = [cols[xs.min()], rows[ys.min()], cols[xs.max()], rows[ys.max()]]
        expected = np.concatenate([np.maximum(old[:2], tight[:2]), np.minimum(old[2:], tight[2:])])
        if left.sum() < on_grid.sum():
            assert new.tolist() == expected.tolist()
            shrunk += new.tolist() != old.tolist()
        else:
            assert new.tolist() == old.tolist()  # nothing hidden, the annotation as it was
    return shrunk


def test_an_image_without_masks_has_no_annotated_pixel_covered(toy, tmp_path):
    """Where an image has no mask file, its boxes stand in for its objects, and nothing
    is pasted over them (a box is not its object's outline)."""
    copy = tmp_path / "toy"
    shutil.copytree(toy, copy)
    ds = VOCDataset(copy, split="train")
    bare = [0, 2, 4]
    for i in bare:
        ds.mask_path(i).unlink()
    sampler = _sampler(ds, 1.0)
    assert sampler.paste_bank and not set(bare) & set(sampler.masks)
    pasted = 0
    for i in bare * 8:
        view = ImageView(i, *sampler.image(i), False, ds[i].boxes, ds[i].labels)
        new_view = sampler._paste(view)
        pasted += len(new_view.boxes) - len(ds[i].boxes)
        assert np.array_equal(new_view.boxes[: len(ds[i].boxes)], ds[i].boxes)
        changed = (new_view.image != view.image).any(axis=0)
        for box in sampler.gt_boxes(view):  # inside every annotated box, nothing changed
            x1, y1 = np.ceil(box[:2]).astype(int)  # input pixels whose centres surely fall
            x2, y2 = np.floor(box[2:] + view.scale - 1).astype(int)  # in the box
            assert not changed[y1 : y2 + 1, x1 : x2 + 1].any()
    assert pasted > 0


def test_without_masks_copy_paste_is_off_unless_asked_for(toy, tmp_path):
    copy = tmp_path / "toy"
    shutil.copytree(toy, copy)
    shutil.rmtree(copy / "VOC2007" / "SegmentationObject")
    ds = VOCDataset(copy, split="train")
    sampler = _sampler(ds, 1.0)  # the default: on where there are masks
    assert sampler.paste_bank == []
    sampler._paste = None  # never called without masks
    batch = sampler.batch([0, 1])
    for b, i in enumerate((0, 1)):  # each image of the batch as it is, perhaps mirrored
        inputs = [sampler.image(i, flip=flip)[0] for flip in (False, True)]
        h, w = inputs[0].shape[1:]
        assert any(np.array_equal(batch.images[b, :, :h, :w], x) for x in inputs)
    # asked for on the command line, it is refused before any work, in one line
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "minircnn.train",
            "--voc-root",
            str(copy),
            "--split",
            "train",
            "--copy-paste",
            "0.5",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error:")
    assert "--copy-paste needs object masks" in run.stderr and not (tmp_path / "runs").exists()


class _TwoImages:
    """A stand-in data set: image 0 red with a green disc (its only object, class 2),
    image 1 blue with no object."""

    def __init__(self):
        from types import SimpleNamespace

        yy, xx = np.mgrid[:40, :40]
        self.disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 7**2  # inside the box (10, 10, 30, 30)
        red = np.zeros((40, 40, 3), np.float32) + [255, 0, 0]
        red[self.disc] = [0, 255, 0]
        self.images = [red, np.zeros((40, 40, 3), np.float32) + [0, 0, 255]]
        box = np.array([[10, 10, 30, 30]], np.float32)
        self.items = [
            SimpleNamespace(boxes=box, labels=np.array([2])),
            SimpleNamespace(boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, int)),
        ]

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.items[i]

    def load_image(self, i):
        return self.images[i]

    def load_masks(self, i):
        return self.disc[None] if i == 0 else np.zeros((0, 40, 40), bool)


def test_pretraining_crops_pasted_along_the_mask():
    from minircnn.pretrain import PretrainConfig, crop_bank

    config = PretrainConfig(crops_per_object=0, background_per_image=0, pasted_per_object=3)
    identity = Preprocessing((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    crops, labels = crop_bank(_TwoImages(), 16, identity, config, np.random.default_rng(0))
    assert crops.shape == (3, 3, 16, 16) and labels.tolist() == [2, 2, 2]
    for crop in crops:  # the disc's own pixels inside, the other image's blue outside
        assert np.allclose(crop[:, 8, 8], [0, 255, 0])
        for y, x in [(0, 0), (0, 15), (15, 0), (15, 15)]:  # corners: outside the disc
            assert np.allclose(crop[:, y, x], [0, 0, 255])
    # no masks (a data set without SegmentationObject): no pasted crops
    no_masks = _TwoImages()
    no_masks.load_masks = lambda i: None
    config = PretrainConfig(crops_per_object=1, background_per_image=0, pasted_per_object=3)
    crops, _ = crop_bank(no_masks, 16, identity, config, np.random.default_rng(0))
    assert len(crops) == 1  # the object's own crop only
    # a mask without pixels (a hidden object): its "cutout" would be pure background
    hidden = _TwoImages()
    hidden.load_masks = lambda i: np.zeros((1 - i, 40, 40), bool)
    crops, _ = crop_bank(hidden, 16, identity, config, np.random.default_rng(0))
    assert len(crops) == 1


def test_pasted_objects_reach_anchor_targets_and_rpn_sampling(toy):
    """Faster R-CNN's path: a view from ``view()`` with objects pasted in hands them to
    ``gt_boxes`` (the RPN's anchor targets) in input pixels, mirrored views included, and
    a proposal on a pasted box becomes a foreground RoI with its label and zero targets."""
    ds = VOCDataset(toy, split="train")
    config = SamplerConfig(
        rois_per_batch=512, copy_paste=1.0, copy_paste_objects=2, jittered_per_gt=0
    )
    pre = Preprocessing((120.0,) * 3, (60.0,) * 3, short_side=96, max_side=160)
    sampler = HierarchicalSampler(ds, None, config, pre, np.random.default_rng(2))
    seen = set()
    for i in list(range(len(ds))) * 2:
        view = sampler.view(i)
        n_own = len(ds[i].boxes)
        if len(view.boxes) == n_own:
            continue
        seen.add(view.flip)
        pasted, labels = view.boxes[n_own:], view.labels[n_own:]
        in_input = (flip_boxes(pasted, ds[i].width) if view.flip else pasted) * view.scale
        np.testing.assert_allclose(sampler.gt_boxes(view)[n_own:], in_input, rtol=1e-5)
        rois = np.column_stack([np.zeros(len(in_input)), in_input]).astype(np.float32)
        batch = sampler.batch_from_proposals([view], rois)
        for box, label in zip(in_input, labels, strict=True):
            hits = np.flatnonzero(np.all(np.abs(batch.rois[:, 1:] - box) < 1e-3, axis=1))
            assert len(hits) == 2  # the pasted ground truth and the proposal on it
            assert (batch.labels[hits] == label).all()
            targets = batch.bbox_targets[hits][:, 4 * label : 4 * label + 4]
            np.testing.assert_allclose(targets, 0, atol=1e-5)
    assert seen == {False, True}  # pasted into mirrored and unmirrored views
