"""Memory of one large image through ``covidedge infer --out`` (issue 22, item 27): masks and the
overlay are made and written at the image's own size without full-size float or Pillow copies.
Each run is a fresh process (VmHWM, Linux); benchmarks/memory.py (case infer-out) measures the
shipped models on an 8000 x 8000 image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.graphs import tiny_models

MB = 1024 * 1024
SIDE = 3000

PEAK_SCRIPT = r"""
import sys
from covidedge.cli.main import main
try:
    main(["infer", sys.argv[1], "-c", sys.argv[2], "-s", sys.argv[3], "--out", sys.argv[4]])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
with open("/proc/self/status") as fh:
    print(int([l.split()[1] for l in fh if l.startswith("VmHWM:")][0]) * 1024)
"""


def _peak(image, models, out) -> int:
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc/self/status (Linux only)")
    res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(image), str(models[0]), str(models[1]),
                          str(out)], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.split()[-1])


def test_one_large_image_with_out_costs_about_ten_bytes_per_pixel(tmp_path):
    models = tiny_models(tmp_path / "models")
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    big = tmp_path / "big.png"
    Image.fromarray(((xx // 7 + yy // 5) % 256).astype(np.uint8)).save(big, compress_level=1)
    small = tmp_path / "small.png"
    Image.fromarray(np.asarray(Image.open(big))[:64, :64]).save(small)
    base = _peak(small, models, tmp_path / "out_small")
    peak = _peak(big, models, tmp_path / "out_big")
    # what one image must cost: its float32 gray (4 B/px, kept for the overlay), the two masks
    # (2 B/px), the RGB overlay (3 B/px) and the decoder's 8-bit samples (1 B/px), plus 64 MB of
    # bounded temporaries. Before: full-size float probability maps and their copies, Pillow's
    # copies of the gray and the overlay (4 B/px RGB) took about 25 B/px.
    budget = SIDE * SIDE * 10 + 64 * MB
    assert peak - base < budget, f"{(peak - base) / MB:.0f} MB > {budget / MB:.0f} MB"
    out = tmp_path / "out_big"
    overlay = np.asarray(Image.open(out / "big_overlay.png"))
    assert overlay.shape == (SIDE, SIDE, 3)
    assert np.asarray(Image.open(out / "big_lungs.png")).shape == (SIDE, SIDE)
