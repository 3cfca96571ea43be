"""What machine this is: CPU, memory, OS, backend versions, NVIDIA GPU and Jetson release.

Engine manifests record it at build time and compare it at load time; bench reports print it,
with the facts that decide latency (:func:`probe_latency_facts`: CPU ISA, clocks, governor).
The probe is cheap and never raises: a fact it cannot read is ``None``. It imports no torch
(a version comes from package metadata unless torch is already imported) and imports TensorRT /
pycuda only when ``use_backends=True`` (the TensorRT paths, which need them anyway).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, Iterable, List, Optional

#: Where L4T (the Jetson Linux release) writes its version.
TEGRA_RELEASE_FILE = "/etc/nv_tegra_release"
#: Device-tree board name (Jetson and other ARM boards).
DEVICE_TREE_MODEL = "/proc/device-tree/model"

#: Distribution names under which each backend's Python package is published.
_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs"),
    "openvino": ("openvino",),
    "pycuda": ("pycuda",),
    "torch": ("torch",),
    "numpy": ("numpy",),
}
#: Packages whose versions probe_machine reports, in the order reports list them.
PACKAGE_KEYS = ("onnxruntime", "tensorrt", "pycuda", "torch", "openvino", "numpy")
#: Packages whose module ``__version__`` is a build string ('2026.4.1-22982-e213a147257-releases/
#: 2026/4'): their version is the distribution's release whether or not they are imported.
_RELEASE_FROM_DISTRIBUTION = ("openvino",)
#: CPU instruction-set features that decide which fp32 / int8 / fp16 kernels a CPU backend can use.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "i8mm", "sve")


# -- plain parsers (tested on any machine) ---------------------------------------------------

def module_present(name: str) -> bool:
    """True when ``name`` can be imported (found on the path); nothing is imported."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def parse_l4t_release(text: str) -> Optional[str]:
    """'# R36 (release), REVISION: 3.0, ...' -> '36.3.0' (the L4T release), or None."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    if not m:
        return None
    return f"{m.group(1)}.{m.group(2).strip('.')}"


def parse_nvpmodel(text: str) -> Optional[str]:
    """Output of ``nvpmodel -q`` ('NV Power Mode: MAXN\\n0') -> 'MAXN (mode 0)', or None."""
    m = re.search(r"NV Power Mode:\s*(\S.*)", text or "")
    if not m:
        return None
    name = m.group(1).strip()
    rest = (text or "")[m.end():].strip().splitlines()
    if rest and rest[0].strip().isdigit():
        return f"{name} (mode {rest[0].strip()})"
    return name


def parse_nvidia_smi(text: str) -> Optional[Dict[str, Any]]:
    """First line of ``nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version
    --format=csv,noheader,nounits`` -> {name, compute_capability, memory_mib, driver}."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return None
    parts = [p.strip() for p in lines[0].split(",")]
    if len(parts) == 4:
        name, cc, mem, driver = parts
    elif len(parts) == 3:  # drivers older than 510 know no compute_cap field
        name, mem, driver = parts
        cc = None
    else:
        return None
    return {
        "name": name or None,
        "compute_capability": cc if cc and re.fullmatch(r"\d+\.\d+", cc) else None,
        "memory_mib": _to_int(mem),
        "driver": driver or None,
    }


def parse_meminfo(text: str) -> Optional[int]:
    """'MemTotal: 16310948 kB' from /proc/meminfo -> total memory in MiB."""
    m = re.search(r"MemTotal:\s*(\d+)\s*kB", text or "")
    return int(m.group(1)) // 1024 if m else None


def parse_cpuinfo(text: str) -> Optional[str]:
    """The CPU model from /proc/cpuinfo ('model name' on x86; 'Model'/'Hardware' on ARM)."""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text or "", re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return None


def parse_cpu_flags(text: str) -> List[str]:
    """The :data:`ISA_FLAGS` a /proc/cpuinfo text reports ("flags" on x86, "Features" on ARM),
    in the order of ISA_FLAGS."""
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            have = set(value.split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def parse_gpu_clocks(text: str) -> Optional[str]:
    """First line of ``nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem
    --format=csv,noheader,nounits`` -> 'SM 1980 / 1980 MHz, memory 3201 / 3201 MHz (now / max)'."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    parts = [p.strip() for p in lines[0].split(",")] if lines else []
    if len(parts) != 4:
        return None
    return f"SM {parts[0]} / {parts[1]} MHz, memory {parts[2]} / {parts[3]} MHz (now / max)"


def _to_int(text) -> Optional[int]:
    try:
        return int(float(str(text).strip()))
    except (TypeError, ValueError):
        return None


# -- small readers that never raise ----------------------------------------------------------
def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read(65536).decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def _run(cmd: Iterable[str], timeout: float = 3.0) -> Optional[str]:
    cmd = list(cmd)
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def package_version(name: str) -> Optional[str]:
    """Installed version of a backend package without importing it: the imported module's
    ``__version__`` when there is one (the version that runs), else the first distribution of
    the package that is installed; None when none is."""
    module = None if name in _RELEASE_FROM_DISTRIBUTION else sys.modules.get(name)
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    for dist in _DISTRIBUTIONS.get(name, (name,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken metadata folder must not break the probe
            continue
    return None


def cpu_isa() -> List[str]:
    """The :data:`ISA_FLAGS` this CPU reports in /proc/cpuinfo."""
    return parse_cpu_flags(_read_text("/proc/cpuinfo") or "")


def _tensorrt_version(use_backends: bool) -> Optional[str]:
    if use_backends and "tensorrt" not in sys.modules and module_present("tensorrt"):
        try:
            import tensorrt  # noqa: F401  (exact version, as the engine sees it)
        except Exception:
            return None
    version = package_version("tensorrt")
    if version is None and module_present("tensorrt"):
        return "unknown"
    return version


def _gpu_from_pycuda(device: int) -> Optional[Dict[str, Any]]:
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() <= device:
            return None
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": f"{major}.{minor}",
                "memory_mib": int(dev.total_memory()) // (1024 * 1024),
                "driver": _driver_version(cuda)}
    except Exception:
        return None


def _driver_version(cuda) -> Optional[str]:
    try:
        v = int(cuda.get_driver_version())  # CUDA driver API version, e.g. 12040
        return f"CUDA {v // 1000}.{(v % 1000) // 10}"
    except Exception:
        return None


def _gpu_from_nvidia_smi(device: int) -> Optional[Dict[str, Any]]:
    base = ["nvidia-smi", f"--id={device}", "--format=csv,noheader,nounits"]
    text = _run(base + ["--query-gpu=name,compute_cap,memory.total,driver_version"])
    if text is None:  # older drivers reject compute_cap
        text = _run(base + ["--query-gpu=name,memory.total,driver_version"])
    return parse_nvidia_smi(text) if text else None


def probe_gpu(device: int = 0, use_backends: bool = False) -> Optional[Dict[str, Any]]:
    """Name, compute capability ('8.7'), memory (MiB) and driver of NVIDIA GPU ``device``, or None.

    pycuda is asked first (exact compute capability, works on Jetson where nvidia-smi is
    partial) when it is already imported or ``use_backends`` is set; nvidia-smi otherwise."""
    info = None
    if use_backends or "pycuda.driver" in sys.modules:
        if module_present("pycuda"):
            info = _gpu_from_pycuda(device)
    if info is None:
        info = _gpu_from_nvidia_smi(device)
    return info


def probe_machine(device: int = 0, use_backends: bool = False) -> Dict[str, Any]:
    """Facts about this machine as a flat dict of strings / numbers / None. Never raises.

    Keys: cpu, cpu_cores, memory_mib, os, arch, python, onnxruntime, tensorrt, pycuda, torch,
    numpy, gpu, gpu_compute_capability, gpu_memory_mib, gpu_driver, board, l4t_release,
    power_mode."""
    facts: Dict[str, Any] = {}
    try:
        facts["cpu"] = parse_cpuinfo(_read_text("/proc/cpuinfo") or "") or platform.processor() or None
        facts["cpu_cores"] = os.cpu_count()
        facts["memory_mib"] = parse_meminfo(_read_text("/proc/meminfo") or "")
        facts["os"] = platform.platform()
        facts["arch"] = platform.machine()
        facts["python"] = platform.python_version()
        for name in ("onnxruntime", "openvino", "pycuda", "torch", "numpy"):
            facts[name] = package_version(name)
        facts["tensorrt"] = _tensorrt_version(use_backends)
        gpu = probe_gpu(device, use_backends=use_backends) or {}
        facts["gpu"] = gpu.get("name")
        facts["gpu_compute_capability"] = gpu.get("compute_capability")
        facts["gpu_memory_mib"] = gpu.get("memory_mib")
        facts["gpu_driver"] = gpu.get("driver")
        facts["board"] = _read_text(DEVICE_TREE_MODEL) or None
        tegra = _read_text(TEGRA_RELEASE_FILE)
        facts["l4t_release"] = parse_l4t_release(tegra) if tegra else None
        facts["power_mode"] = None
        if facts["l4t_release"]:
            facts["power_mode"] = parse_nvpmodel(_run(["nvpmodel", "-q"]) or "")
    except Exception as exc:  # the probe informs; it must never stop a build or a benchmark
        facts["probe_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def probe_latency_facts(machine: Dict[str, Any]) -> Dict[str, Any]:
    """Facts that decide latency and that :func:`probe_machine` does not record, for ``machine``
    (its dict): CPU ISA features (VNNI / AMX / fp16 decide the int8 and fp16 kernels), CPU
    frequency governor and clock (MHz), NVIDIA GPU clocks (nvidia-smi: SM / memory now and max,
    MHz), and on a Jetson whether the GPU clock is locked (devfreq min == max, as jetson_clocks
    sets it). Keys: cpu_isa, cpu_governor, cpu_mhz, gpu_clocks, jetson_gpu_clock_locked, each
    only when known. Never raises."""
    extras: Dict[str, Any] = {}
    try:
        isa = cpu_isa()
        if isa:
            extras["cpu_isa"] = " ".join(isa)
        gov = _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        if gov:
            extras["cpu_governor"] = gov
        cur = _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
        top = _read_text("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        if cur and top and cur.isdigit() and top.isdigit():
            extras["cpu_mhz"] = f"{int(cur) // 1000} / {int(top) // 1000}"
        if machine.get("gpu") and not machine.get("l4t_release"):
            clocks = parse_gpu_clocks(_run(["nvidia-smi", "--id=0", "--format=csv,noheader,nounits",
                                            "--query-gpu=clocks.sm,clocks.max.sm,clocks.mem,"
                                            "clocks.max.mem"]) or "")
            if clocks:
                extras["gpu_clocks"] = clocks
        if machine.get("l4t_release"):
            import glob

            for dev in sorted(glob.glob("/sys/class/devfreq/*")):
                name = _read_text(os.path.join(dev, "device/of_node/name")) or os.path.basename(dev)
                if "gpu" not in name.lower() and "gv11b" not in name.lower() and "ga10b" not in name.lower():
                    continue
                lo, hi = _read_text(os.path.join(dev, "min_freq")), _read_text(os.path.join(dev, "max_freq"))
                now = _read_text(os.path.join(dev, "cur_freq"))
                if lo and hi:
                    extras["jetson_gpu_clock_locked"] = lo == hi
                    if now and now.isdigit() and hi.isdigit():
                        extras["gpu_clocks"] = (f"{int(now) // 1_000_000} / {int(hi) // 1_000_000} MHz "
                                                "(now / max)")
                break
    except Exception as exc:  # facts for a report; never a reason to fail a benchmark
        extras["extras_error"] = f"{type(exc).__name__}: {exc}"
    return extras


def describe_device(machine: Dict[str, Any]) -> str:
    """One phrase for reports: 'NVIDIA Orin (sm 8.7), L4T 36.3.0' or the CPU model."""
    if machine.get("gpu"):
        text = f"{machine['gpu']} (compute {machine.get('gpu_compute_capability') or '?'})"
    else:
        text = f"{machine.get('cpu') or 'unknown CPU'} ({machine.get('cpu_cores') or '?'} cores)"
    if machine.get("l4t_release"):
        text += f", L4T {machine['l4t_release']}"
    return text
