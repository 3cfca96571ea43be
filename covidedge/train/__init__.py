"""Training: datasets and augmentation, the classifier and segmenter loop (``loop``, with what
differs per task in ``tasks`` and the device and mixed precision in ``amp``), losses, and the
loss study (``study``).

Needs torch (``pip install 'covidedge[train]'``). Names are loaded on first use, so importing
this package stays cheap.
"""

_LAZY = {
    "train_classifier": "covidedge.train.loop",
    "train_segmenter": "covidedge.train.loop",
    "study_losses": "covidedge.train.study",
    "LossStudyResult": "covidedge.train.study",
    "TrainResult": "covidedge.train.loop",
    "save_checkpoint": "covidedge.formats.checkpoint",
    "load_checkpoint": "covidedge.models.loading",
    "checkpoint_sha256": "covidedge.formats.checkpoint",
    "BatchAugment": "covidedge.train.augment",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'covidedge.train' has no attribute {name!r}")


__all__ = list(_LAZY)
