"""One image path for training, detection and R-CNN (fast-rcnn's ``utils/blob.py``).

``Preprocessing`` declares everything that turns an image into network input and network
output back into boxes: the per-channel pixel statistics of the training split, the
scale rule (section 2.3 / 5.2: shorter side 600, longer side capped at 1000 in the paper)
and the normalisation of the box-regression targets. It is frozen, saved in every
checkpoint, and read back by detection, so test time prepares images exactly as training
did.
"""

from dataclasses import dataclass

import numpy as np
import skimage.transform

from minircnn.ops.boxes import TARGET_MEANS, TARGET_STDS


@dataclass(frozen=True)
class Preprocessing:
    """Image and target normalisation; comments give the paper's values."""

    pixel_mean: tuple[float, float, float]  # RGB, 0..255 scale, of the training split
    pixel_std: tuple[float, float, float]  # (the paper subtracts the mean only)
    short_side: int = 192  # paper: 600 px, single-scale training and testing
    max_side: int = 320  # paper: 1000 px
    target_means: tuple[float, float, float, float] = TARGET_MEANS
    target_stds: tuple[float, float, float, float] = TARGET_STDS

    def __post_init__(self) -> None:
        for name in ("pixel_mean", "pixel_std", "target_means", "target_stds"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    def scale(self, height: int, width: int, short_side: int | None = None) -> float:
        """Factor that brings the shorter side to ``short_side`` (default: the training
        scale) unless the longer side would pass its cap. The cap grows in proportion
        with the scale, as the paper's pyramid (480..1200) caps at 2000 px."""
        short = short_side or self.short_side
        cap = self.max_side * short / self.short_side
        return min(short / min(height, width), cap / max(height, width))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """float ``[..., H, W, 3]`` RGB pixels -> float32 ``[..., 3, H, W]``: per-channel
        mean subtracted, divided by the standard deviation, channels moved first."""
        x = (np.asarray(pixels, dtype=np.float32) - np.float32(self.pixel_mean)) / np.float32(
            self.pixel_std
        )
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))  # [..., H, W, 3] -> [..., 3, H, W]

    def network_input(self, image: np.ndarray, scale: float, flip: bool = False) -> np.ndarray:
        """uint8 RGB ``[H, W, 3]`` -> float32 ``[3, round(H*s), round(W*s)]``: optionally
        mirrored (before scaling, as fast-rcnn flips its images, so boxes flipped in
        original pixels and then scaled land on the same pixels), rescaled (bilinear),
        normalised."""
        if flip:
            image = image[:, ::-1]
        height, width = image.shape[:2]
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixels = image.astype(np.float32)
        if size != (height, width):
            pixels = skimage.transform.resize(
                pixels, size, order=1, preserve_range=True, anti_aliasing=False
            )
        return self.normalise(pixels)


def pixel_statistics(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel RGB mean and standard deviation over the images of a VOCDataset
    (float32 [3] each, 0..255 scale)."""
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for i in range(len(dataset)):
        pixels = dataset.load_image(i).reshape(-1, 3).astype(np.float64)
        total += pixels.sum(axis=0)
        total_sq += (pixels**2).sum(axis=0)
        count += len(pixels)
    mean = total / count
    return mean.astype(np.float32), np.sqrt(total_sq / count - mean**2).astype(np.float32)


def pad_batch(images: list[np.ndarray]) -> np.ndarray:
    """Network inputs ``[3, H_i, W_i]`` -> one float32 ``[N, 3, max H, max W]`` batch,
    zero-padded at the bottom and right (0 is the mean after normalisation)."""
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    batch = np.zeros((len(images), 3, height, width), dtype=np.float32)
    for b, im in enumerate(images):
        batch[b, :, : im.shape[1], : im.shape[2]] = im
    return batch
