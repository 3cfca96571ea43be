"""Data layer (numpy + Pillow; pydicom only for DICOM): decoding, THE preprocessing, datasets.

* :mod:`covidedge.data.imageio`: safe decoding of X-ray files into gray floats in [0, 1]
  (file checks in :mod:`~covidedge.data.checks`, PNG/JPEG/BMP/TIFF in
  :mod:`~covidedge.data.rasterio`, DICOM in :mod:`~covidedge.data.dicomio`).
* :mod:`covidedge.data.intensity`: the one rule from samples to [0, 1], for every container.
* :mod:`covidedge.data.preprocess`: the one preprocessing shared by every stage.
* :mod:`covidedge.data.covidqu`: COVID-QU-Ex folders (splits, classes, masks).
* :mod:`covidedge.data.synth`: a synthetic dataset in the same layout, for tests and demos.
"""

from covidedge.data.covidqu import CLASSES, SPLITS, CovidQuDataset, Sample
from covidedge.data.imageio import IMAGE_SUFFIXES, is_image_path, read_gray, read_mask, write_png
from covidedge.data.preprocess import (PREPROCESSING_ID, preprocess, preprocess_batch,
                                       resize_mask)
from covidedge.data.synth import make_synthetic_dataset

__all__ = [
    "CLASSES",
    "IMAGE_SUFFIXES",
    "PREPROCESSING_ID",
    "SPLITS",
    "CovidQuDataset",
    "Sample",
    "is_image_path",
    "make_synthetic_dataset",
    "preprocess",
    "preprocess_batch",
    "read_gray",
    "read_mask",
    "resize_mask",
    "write_png",
]
