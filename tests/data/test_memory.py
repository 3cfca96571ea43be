"""Memory of decoding a large image: the samples are converted block by block to one float32
result (no float64 or second full-size copy), and ``reduce_for`` decodes large images reduced.
Peaks are measured in a fresh process (VmHWM, Linux). benchmarks/memory.py measures the whole
classifier path at 8000 x 8000."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidedge.data.imageio import read_gray
from covidedge.data.preprocess import preprocess, resize_gray

SIDE = 3000
MB = 1024 * 1024

PEAK_SCRIPT = r"""
import sys
from covidedge.data.imageio import read_gray
def status(key):
    with open("/proc/self/status") as fh:
        return int([l.split()[1] for l in fh if l.startswith(key + ":")][0]) * 1024
before = status("VmRSS")
if sys.argv[2] == "full":
    gray = read_gray(sys.argv[1])
else:
    gray = read_gray(sys.argv[1], reduce_for=(256, 256))
print(status("VmHWM") - before, gray.shape[0], gray.shape[1])
"""


@pytest.fixture(scope="module")
def big_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    gray = ((xx // 7 + yy // 5) % 256).astype(np.uint8)
    paths = {"gray.png": folder / "gray.png", "rgb.jpg": folder / "rgb.jpg"}
    Image.fromarray(gray).save(paths["gray.png"], compress_level=1)
    Image.fromarray(np.dstack([gray, gray // 2, 255 - gray])).save(paths["rgb.jpg"], quality=90)
    try:
        from tests.data.test_imageio import write_dicom

        paths["gray.dcm"] = write_dicom(folder / "gray.dcm", gray.astype(np.uint16) * 16,
                                        center=2048, width=4096)
    except pytest.skip.Exception:  # pydicom is not installed
        pass
    return paths


def _peak(path: Path, mode: str):
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc/self/status (Linux only)")
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), mode], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    delta, h, w = (int(v) for v in out.stdout.split())
    return delta, (h, w)


@pytest.mark.parametrize("name, samples_per_px", [("gray.png", 1), ("rgb.jpg", 4), ("gray.dcm", 4)])
def test_full_decode_costs_its_samples_plus_one_float32_image(big_images, name, samples_per_px):
    if name not in big_images:
        pytest.skip("pydicom is not installed")
    delta, shape = _peak(big_images[name], "full")
    assert shape == (SIDE, SIDE)
    # The samples (DICOM: the file's pixel data and pydicom's array) + the float32 result +
    # bounded block temporaries (64 MB of slack). The float64 conversion used to cost about
    # 440 MB here for the JPEG, 200 MB for the PNG and 300 MB for the DICOM.
    budget = SIDE * SIDE * (samples_per_px + 4) + 64 * MB
    assert delta < budget, f"{name}: {delta / MB:.0f} MB > {budget / MB:.0f} MB"


def test_reduced_decode_of_a_large_jpeg_is_small_and_close(big_images):
    delta, shape = _peak(big_images["rgb.jpg"], "reduced")
    assert min(shape) >= 2 * 256 and shape[0] < SIDE  # reduced, never below twice the input
    assert delta < 64 * MB
    full = preprocess(big_images["rgb.jpg"], size=(256, 256))[0, 0]
    reduced = resize_gray(read_gray(big_images["rgb.jpg"], reduce_for=(256, 256)), (256, 256))
    assert np.abs(full - reduced).mean() < 0.01


def test_reduce_for_leaves_images_near_the_input_size_alone(tmp_path):
    img = (np.arange(600 * 500) % 251).astype(np.uint8).reshape(600, 500)
    p = tmp_path / "a.png"
    Image.fromarray(img).save(p)
    np.testing.assert_array_equal(read_gray(p, reduce_for=(256, 256)), read_gray(p))
    assert read_gray(p, reduce_for=(100, 100)).shape == (300, 250)  # factor 2: >= 2 x 100 px
