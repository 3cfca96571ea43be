"""Fixtures for the DICOM tests: tiny models and a PACS-like export folder built with pydicom."""

from __future__ import annotations

import pytest

from tests.graphs import tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(classifier.onnx, segmenter.onnx): hand-made graphs whose outputs are known exactly."""
    return tiny_models(tmp_path_factory.mktemp("models"))


_READ_BACK: set = set()


@pytest.fixture(autouse=True)
def every_seg_reads_back_with_highdicom(tmp_path_factory):
    """After each DICOM test, every Segmentation it wrote is read back with highdicom's own
    reader (``segread``) and its segments decoded: a SEG a reader refuses is a failure wherever
    it was written."""
    yield
    try:
        import highdicom as hd
    except ImportError:
        return
    for path in sorted(tmp_path_factory.getbasetemp().rglob("*_seg.dcm")):
        if path in _READ_BACK:
            continue
        _READ_BACK.add(path)
        seg = hd.seg.segread(str(path))
        assert seg.number_of_segments == 2, path
        uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2])
        assert pixels.shape[-1] == 2 and pixels.dtype.kind in "bu", path
