"""Plain images without annotations, for detection on a user's own files.

``ImageFolder`` gathers image files (folders are searched recursively) and looks enough
like a VOCDataset (``root``, ``split``, items with ``image_id`` and ``path``,
``load_image``) for the proposal cache to work on it unchanged.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minircnn.cli import InputError
from minircnn.data.convert.core import IMAGE_SUFFIXES, list_images
from minircnn.data.voc import load_image


@dataclass(frozen=True)
class ImageFile:
    """One image: ``image_id`` is its path relative to the folder's root."""

    image_id: str
    path: Path


class ImageFolder:
    """Image files named directly or found (recursively, by suffix) in folders, sorted.

    Raises FileNotFoundError naming a path that does not exist, ValueError when nothing
    is found.
    """

    split = "images"

    def __init__(self, paths: list[str | Path]) -> None:
        files = []
        for p in map(Path, paths):
            if p.is_dir():
                files += list_images(p)
            elif p.is_file():
                files.append(p)
            else:
                raise FileNotFoundError(f"{p}: no such image or folder")
        if not files:
            raise InputError(  # a ValueError, as the docstring says
                f"{', '.join(map(str, paths))}: no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        files = list(dict.fromkeys(f.resolve() for f in files))  # each file once
        self.root = Path(os.path.commonpath([f.parent for f in files]))
        self.items = [ImageFile(str(f.relative_to(self.root)), f) for f in files]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ImageFile:
        return self.items[i]

    def load_image(self, i: int) -> np.ndarray:
        """RGB uint8 ``[H, W, 3]`` (grayscale, RGBA, palette and CMYK converted)."""
        return load_image(self.items[i].path)
