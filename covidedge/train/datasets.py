"""In-memory training datasets over COVID-QU-Ex samples, decoded once with THE preprocessing.

Images go through ``covidedge.data.preprocess.preprocess`` (the function the runtime uses) and
are cached compactly: as uint8 when the preprocessed values are exact multiples of 1/255 (an
8-bit PNG already at the model's size, the common case: lossless), else as float16 (error below
2.5e-4). Masks are resized with ``resize_mask`` and cached bit-packed. The real Train split
(3728 images of 256x256) then takes about 250-500 MB.

Class balance: the classifier uses a class-weighted cross-entropy (``class_weights``) rather
than a weighted sampler, so every epoch is one pass over every image (epochs stay comparable
and resumable, and no minority image is repeated inside an epoch) while each class contributes
the same total weight to the loss (COVID-19 has twice the images of each other class).

This module imports torch only when items are fetched.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from covidedge.data.covidqu import select_samples
from covidedge.errors import DatasetError

__all__ = ["load_splits", "class_weights", "CachedImages", "ClassificationDataset",
           "SegmentationDataset"]


def load_splits(data_root, limit_per_class: Optional[int], seed: int,
                options: Optional[Dict[str, Any]] = None):
    """(Train samples, Val samples) of the COVID-QU-Ex folder ``data_root``, at most
    ``limit_per_class`` images per class of each (a seeded choice). A missing split, or a class
    missing from one unless ``options["allow_missing_classes"]``, is a DatasetError; classes
    allowed to be missing are recorded in ``options["missing_classes"]``."""
    from covidedge.data.covidqu import CovidQuDataset

    ds = CovidQuDataset(data_root)
    for split in ("Train", "Val"):
        if split not in ds.splits:
            raise DatasetError(f"dataset has no {split} split (found: {', '.join(ds.splits) or 'none'})",
                               path=data_root, hint="training needs Train and Val folders")
    allow = bool((options or {}).get("allow_missing_classes", False))
    missing = {split: ds.check_classes(split, allow_missing=allow) for split in ("Train", "Val")}
    if options is not None and any(missing.values()):  # recorded in the checkpoint's options
        options["missing_classes"] = {k: v for k, v in missing.items() if v}
    train = select_samples(ds.samples("Train"), limit_per_class, seed)
    val = select_samples(ds.samples("Val"), limit_per_class, seed)
    return train, val


def class_weights(label_indices: Sequence[int], num_classes: int) -> np.ndarray:
    """Cross-entropy weights ``N / (K * n_c)``: 1.0 for every class when balanced, larger for
    rarer classes. A class absent from the data gets weight 0 (it has no loss terms anyway)."""
    counts = np.bincount(np.asarray(label_indices, dtype=np.int64), minlength=num_classes)
    counts = counts[:num_classes].astype(np.float64)
    total = counts.sum()
    w = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    w[present] = total / (present.sum() * counts[present])
    return w.astype(np.float32)


def _progress(iterable, total: int, desc: str, enabled: bool):
    from covidedge.progress import bar

    return bar(iterable, total=total, desc=desc, unit="img", enabled=enabled)


class CachedImages:
    """Preprocessed images of ``samples`` held in memory; ``get(i)`` returns (1, H, W) float32.
    ``shapes[i]`` is the decoded image's own ``(H, W)`` before resizing."""

    def __init__(self, samples: Sequence, size=(256, 256), progress: bool = True, desc: str = "decode"):
        from covidedge.data.preprocess import as_gray, resize_gray

        self.size = (int(size[0]), int(size[1]))
        self._data: List[np.ndarray] = []
        self.shapes: List[tuple] = []
        for s in _progress(samples, len(samples), desc, progress):
            gray = as_gray(s.image)  # == preprocess(s.image, size): decode, then resize
            self.shapes.append(tuple(gray.shape))
            x = resize_gray(gray, self.size)[None]  # (1, H, W) float32 in [0, 1]
            del gray
            q = np.rint(x * 255.0)
            if np.abs(q / 255.0 - x).max() < 1e-6:
                self._data.append(q.astype(np.uint8))
            else:
                self._data.append(x.astype(np.float16))

    def __len__(self) -> int:
        return len(self._data)

    def get(self, i: int) -> np.ndarray:
        a = self._data[i]
        if a.dtype == np.uint8:
            return a.astype(np.float32) / np.float32(255.0)
        return a.astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self._data))


class ClassificationDataset:
    """Map-style dataset of ``(image (1, H, W) float32 tensor, label index int64 tensor)``."""

    def __init__(self, samples: Sequence, size=(256, 256), progress: bool = True):
        if not samples:
            raise DatasetError("no images to train or validate on",
                               hint="check the dataset folder and the split")
        self.samples = list(samples)
        self.labels = np.array([s.label_index for s in self.samples], dtype=np.int64)
        self.images = CachedImages(self.samples, size, progress, desc="decode images")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.images.get(i)), torch.tensor(self.labels[i])


class SegmentationDataset(ClassificationDataset):
    """Map-style dataset of ``(image (1, H, W) float32, masks (2, H, W) float32 0/1, label index)``.

    Mask channel 0 is the lungs, channel 1 the infection; a sample without an infection mask
    (Non-COVID / Normal in some copies of the data) gets an empty one. A missing lung mask, or
    a mask whose size differs from its image's, is a DatasetError: the lungs are a training
    target, and a resized mask would misplace the outline.
    """

    def __init__(self, samples: Sequence, size=(256, 256), progress: bool = True):
        from covidedge.data.imageio import check_mask_shape, read_mask
        from covidedge.data.preprocess import resize_mask

        super().__init__(samples, size, progress)
        self.size = self.images.size
        self._masks: List[np.ndarray] = []
        for i, s in enumerate(_progress(self.samples, len(self.samples), "decode masks", progress)):
            if s.lung_mask is None:
                raise DatasetError(f"image {s.name} has no lung mask", path=s.image,
                                   hint="the segmenter needs 'lung masks/<name>' beside 'images/'")
            lungs = read_mask(s.lung_mask)
            check_mask_shape(lungs.shape, s.lung_mask, self.images.shapes[i], s.image)
            lungs = resize_mask(lungs, self.size)
            if s.infection_mask is not None:
                infection = read_mask(s.infection_mask)
                check_mask_shape(infection.shape, s.infection_mask, self.images.shapes[i], s.image)
                infection = resize_mask(infection, self.size)
            else:
                infection = np.zeros(self.size, dtype=bool)
            self._masks.append(np.packbits(np.stack([lungs, infection]).astype(bool)))

    def masks(self, i: int) -> np.ndarray:
        """(2, H, W) bool masks of item ``i``."""
        h, w = self.size
        return np.unpackbits(self._masks[i], count=2 * h * w).reshape(2, h, w).astype(bool)

    def __getitem__(self, i: int):
        import torch

        return (torch.from_numpy(self.images.get(i)),
                torch.from_numpy(self.masks(i).astype(np.float32)),
                torch.tensor(self.labels[i]))
