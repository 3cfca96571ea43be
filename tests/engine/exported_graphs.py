"""Graphs as ``covidedge export`` writes them, for tests that inspect exported graphs.

Tiny random-weight classifier (Xception, width 1/8) and segmenter (ResUNet, width 8, depth 2) at
64 x 64 px, exported to fp32 ONNX, converted to fp16, and quantized to int8 in both Q/DQ
placements (minmax calibration on 9 synthetic images). Made once per test session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

SIZE = 64
_MADE: Dict[str, Dict[str, Path]] = {}


def exported_graphs(tmp_path_factory) -> Dict[str, Dict[str, Path]]:
    """{task: {"fp32", "fp16", "int8-onnxruntime", "int8-tensorrt": path}} (needs torch)."""
    if _MADE:
        return _MADE
    import torch

    from covidedge.data.synth import make_synthetic_dataset
    from covidedge.export.calibration import make_calibration_set
    from covidedge.export.onnx import export_onnx
    from covidedge.export.precision import convert_fp16, quantize_int8
    from covidedge.models.registry import create_model
    from covidedge.spec import classifier_spec, segmenter_spec
    from covidedge.formats.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("exported")
    root = make_synthetic_dataset(folder / "data", per_class=3, size=SIZE, splits=("Train",))
    calib = make_calibration_set(root, 9, input_size=SIZE, out=folder / "calib.json")
    torch.manual_seed(0)
    made = {}
    for task, name, kw, make in (
            ("classifier", "xception", {"width_mult": 0.125}, classifier_spec),
            ("segmenter", "resunet", {"base_width": 8, "depth": 2}, segmenter_spec)):
        spec = make(model_name=name, input_size=(SIZE, SIZE), model_kwargs=kw)
        ckpt = save_checkpoint(folder / f"{task}.pt", create_model(name, **kw).eval(), spec)
        export_onnx(ckpt, folder / f"{task}.fp32.onnx")
        graphs = {"fp32": folder / f"{task}.fp32.onnx"}
        graphs["fp16"] = convert_fp16(graphs["fp32"], folder / f"{task}.fp16.onnx")
        for placement in ("onnxruntime", "tensorrt"):
            graphs[f"int8-{placement}"] = quantize_int8(
                graphs["fp32"], folder / f"{task}.int8-{placement}.onnx", calib, method="minmax",
                qdq_placement=placement)
        made[task] = graphs
    _MADE.update(made)
    return _MADE
