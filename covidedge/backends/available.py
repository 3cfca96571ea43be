"""Which backends are installed, found without importing any of them."""

from __future__ import annotations

from typing import Dict

from covidedge.machine import module_present, package_version


def available_backends() -> Dict:
    """Backends and their versions, plus the default this machine would use."""
    out = {}
    trt = module_present("tensorrt")
    out["tensorrt"] = {
        "available": trt and module_present("pycuda"),
        "version": package_version("tensorrt") or ("present" if trt else None),
        "reason": "" if trt and module_present("pycuda") else (
            "pycuda is not installed" if trt else "tensorrt is not installed"),
    }
    ort_ok = module_present("onnxruntime")
    providers = []
    if ort_ok:
        try:
            import onnxruntime

            providers = onnxruntime.get_available_providers()
        except Exception:  # a broken install still reports as absent
            ort_ok = False
    out["onnxruntime"] = {"available": ort_ok, "version": package_version("onnxruntime"),
                          "providers": providers, "reason": "" if ort_ok else "onnxruntime is not installed"}
    torch_ok = module_present("torch")
    out["torch"] = {"available": torch_ok, "version": package_version("torch"),
                    "reason": "" if torch_ok else "torch is not installed; pip install covidedge[train]"}
    ov = module_present("openvino")
    out["openvino"] = {"available": ov, "version": package_version("openvino"),
                       "reason": "" if ov else "openvino is not installed; an optional peer for benchmarks"}
    default = "tensorrt" if out["tensorrt"]["available"] else "onnxruntime"
    return {"backends": out, "default_backend": default}
