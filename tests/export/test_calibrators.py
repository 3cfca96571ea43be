"""Calibrators: one interface, one class per method, one factory that refuses what a method
cannot honour. Pure numpy: activations are made here, no graph is run."""

from __future__ import annotations

import numpy as np
import pytest

from covidedge.errors import BadInputError
from covidedge.export.calibrators import (CALIBRATORS, AbsHistogram, Calibrator, EntropyCalibrator,
                                          MinMaxCalibrator, PercentileCalibrator, create_calibrator)
from covidedge.spec import CALIBRATION_METHODS


def _batches(seed=0, n=3):
    """Three batches of two tensors: a ReLU-like one with a long tail, and a signed one."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        relu = np.maximum(rng.laplace(size=(2, 4, 16, 16)), 0).astype(np.float32)
        signed = rng.normal(0.0, 1.0 + i, size=(2, 8)).astype(np.float32)
        yield {"relu": relu, "signed": signed}


def test_every_method_has_one_interchangeable_calibrator():
    assert tuple(CALIBRATORS) == CALIBRATION_METHODS
    for method in CALIBRATION_METHODS:
        cal = create_calibrator(method)
        assert isinstance(cal, Calibrator) and cal.method == method
        cal.collect(_batches())
        ranges = cal.compute_ranges()
        assert list(ranges) == ["relu", "signed"] and cal.batches_seen == 3
        for lo, hi in ranges.values():
            assert lo.dtype == hi.dtype == np.float32
            assert np.ravel(lo)[0] <= 0 < np.ravel(hi)[0]


def test_minmax_is_the_values_seen_over_every_batch():
    data = list(_batches())
    lo = min(float(b["signed"].min()) for b in data)
    hi = max(float(b["signed"].max()) for b in data)
    plain = create_calibrator("minmax", symmetric=False)
    plain.collect(data)
    got = plain.compute_ranges()["signed"]
    assert [a.shape for a in got] == [(1,), (1,)]  # as ONNX Runtime's MinMax writes them
    assert (float(got[0][0]), float(got[1][0])) == (lo, hi)
    sym = create_calibrator("minmax")  # symmetric by default: what signed int8 uses
    sym.collect(data)
    m = max(abs(lo), abs(hi))
    assert [float(v[0]) for v in sym.compute_ranges()["signed"]] == [-m, m]
    assert sym.settings() == {"symmetric": True} and plain.settings() == {"symmetric": False}


def test_collecting_in_parts_equals_collecting_at_once():
    for method in CALIBRATION_METHODS:
        whole, parts = create_calibrator(method), create_calibrator(method)
        whole.collect(_batches(n=4))
        stream = list(_batches(n=4))
        parts.collect(stream[:1])
        parts.collect(stream[1:])
        for name, (lo, hi) in whole.compute_ranges().items():
            plo, phi = parts.compute_ranges()[name]
            assert (float(np.ravel(lo)[0]), float(np.ravel(hi)[0])) == \
                   (float(np.ravel(plo)[0]), float(np.ravel(phi)[0])), (method, name)


def test_histogram_methods_clip_a_long_tail():
    ranges = {}
    options = {"minmax": {}, "entropy": {"histogram_bins": 512},
               "percentile": {"histogram_bins": 512, "percentile": 99.9}}
    for method in ("minmax", "entropy", "percentile"):
        cal = create_calibrator(method, **options[method])
        cal.collect(_batches())
        ranges[method] = float(np.ravel(cal.compute_ranges()["relu"][1])[0])
    assert ranges["minmax"] > max(ranges["percentile"], ranges["entropy"])
    assert min(ranges["percentile"], ranges["entropy"]) > 0.2 * ranges["minmax"]
    # the percentile threshold is the right edge of the histogram bin where 99.9 % falls
    hist = AbsHistogram(512)
    for b in _batches():
        hist.add(b["relu"])
    assert ranges["percentile"] == pytest.approx(hist.percentile(99.9), rel=1e-6)


def test_a_tensor_of_zeros_gets_a_zero_range():
    for method in ("entropy", "percentile"):
        cal = create_calibrator(method)
        cal.collect([{"z": np.zeros((2, 3), np.float32)}])
        assert [float(v) for v in cal.compute_ranges()["z"]] == [0.0, 0.0]


@pytest.mark.parametrize("method,options,message", [
    ("minmax", {"percentile": 99.9},
     "percentile applies with method='percentile' (drop percentile or pass method='percentile')"),
    ("entropy", {"percentile": 99.9}, "percentile applies with method='percentile'"),
    ("minmax", {"histogram_bins": 512},
     "histogram_bins applies with method='entropy' or method='percentile'"),
    ("entropy", {"symmetric": False}, "symmetric applies with method='minmax'"),
    ("entropy", {"bins": 512}, "bins is not a calibration option"),
    ("kl", {}, "calibration method 'kl' is unknown; expected one of minmax, entropy, percentile"),
    ("percentile", {"percentile": 0}, "percentile 0 is outside (0, 100]"),
    ("percentile", {"percentile": "most"}, "percentile 'most' is not a number"),
    ("entropy", {"histogram_bins": 128}, "histogram_bins=128, expected at least 256"),
])
def test_factory_refuses_what_a_method_cannot_honour(method, options, message):
    with pytest.raises(BadInputError) as exc:
        create_calibrator(method, **options)
    assert message in str(exc.value) and len(str(exc.value).splitlines()) == 1
    assert exc.value.exit_code == 3


def test_defaults_and_settings_are_what_graphs_record():
    assert isinstance(create_calibrator(), EntropyCalibrator)
    assert create_calibrator("Percentile").settings() == {"percentile": 99.99, "histogram_bins": 2048}
    assert create_calibrator("entropy", histogram_bins=512).settings() == {"histogram_bins": 512}
    assert isinstance(create_calibrator("percentile", percentile=99.9), PercentileCalibrator)
    assert isinstance(create_calibrator("minmax"), MinMaxCalibrator)


def test_no_activations_is_an_error_not_an_empty_range():
    cal = create_calibrator("minmax")
    cal.collect([])
    with pytest.raises(BadInputError, match="minmax calibration collected no activations"):
        cal.compute_ranges()
