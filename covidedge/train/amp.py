"""Where and in what precision a training step computes: the device and the mixed-precision plan.

``amp="auto"`` gives fp16 autocast with a gradient scaler on CUDA, bf16 autocast on CPUs with
native bf16 (AVX512-BF16 / AMX) and fp32 elsewhere; on a CPU, weights and batches use
channels_last memory whatever the precision. Weights stay fp32: autocast only lowers the matmuls
and convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from covidedge.errors import BadInputError, RuntimeFailure
from covidedge.spec import AMP_MODES

__all__ = ["resolve_device", "AmpPlan", "cpu_has_bf16", "resolve_amp", "to_layout", "amp_words",
           "NARROW_CHANNELS", "narrow_convolutions", "plan_for_model"]

#: Convolutions whose input and output both have fewer channels than this (and more than one
#: input channel) are "narrow": oneDNN's channels_last backward kernels for them crashed with a segmentation fault on
#: AVX-512 CPUs (seen on AMD EPYC with AVX512-BF16, torch 2.13, a residual U-Net of base width 8,
#: with and without bf16), while widths 16 and 32 train. Such models train in the default NCHW
#: layout on CPUs; the kernels chosen for NCHW did not crash.
NARROW_CHANNELS = 16


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; an explicit CUDA request without a
    GPU is an error rather than a silent CPU run."""
    import torch

    dev = str(device or "auto").lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeFailure(f"device {device!r} was asked for, but torch sees no CUDA GPU",
                             hint="use --device cpu or --device auto")
    if not (dev == "cpu" or dev.startswith("cuda") or dev == "mps"):
        raise BadInputError(f"device {device!r} is not known; expected auto, cpu, cuda or cuda:N")
    return dev


@dataclass(frozen=True)
class AmpPlan:
    """How a training step computes: ``dtype`` is "fp32", "bf16" or "fp16"; autocast runs on
    ``device_type``; ``channels_last`` puts weights and batches in NHWC (oneDNN's fast layout on
    CPUs, for fp32 and bf16 alike); ``grad_scaler`` guards fp16 gradients against underflow."""

    mode: str
    dtype: str
    device_type: str
    channels_last: bool
    grad_scaler: bool

    @property
    def enabled(self) -> bool:
        return self.dtype != "fp32"

    def autocast(self):
        import torch

        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype, torch.float32)
        return torch.autocast(device_type=self.device_type, dtype=dt, enabled=self.enabled)

    def to_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "dtype": self.dtype, "device_type": self.device_type,
                "channels_last": self.channels_last, "grad_scaler": self.grad_scaler}


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (oneDNN reports AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(mode: str, device: str) -> AmpPlan:
    """Pick the mixed precision for ``device``: "auto" gives fp16 on CUDA, bf16 on CPUs with
    native bf16 and fp32 otherwise; an explicit mode the device cannot run is an error."""
    m = str(mode or "auto").lower()
    if m not in AMP_MODES:
        raise BadInputError(f"amp={mode!r} is not known; expected one of {', '.join(AMP_MODES)}")
    dev_type = "cuda" if device.startswith("cuda") else ("mps" if device == "mps" else "cpu")
    if m == "auto":
        m_eff = "fp16" if dev_type == "cuda" else ("bf16" if dev_type == "cpu" and cpu_has_bf16() else "off")
    else:
        m_eff = m
    if m_eff == "fp16" and dev_type != "cuda":
        raise BadInputError(f"amp=fp16 needs a CUDA device, not {device!r}",
                            hint="use --amp bf16 on a CPU with bf16 support, or --amp off")
    if m_eff == "bf16" and dev_type == "cpu" and not cpu_has_bf16():
        raise BadInputError("amp=bf16 was asked for, but this CPU has no native bf16 (AVX512-BF16 / AMX); "
                            "emulated bf16 is slower than fp32", hint="use --amp off or --amp auto")
    dtype = {"off": "fp32"}.get(m_eff, m_eff)
    return AmpPlan(mode=m, dtype=dtype, device_type=dev_type,
                   channels_last=dev_type == "cpu",
                   grad_scaler=dtype == "fp16")


def narrow_convolutions(model) -> int:
    """How many 2-D convolutions of ``model`` are narrow (see ``NARROW_CHANNELS``): fewer
    channels in and out; the stem convolution of a one-channel image is not counted, nor a
    head mapping wide features to a few outputs."""
    import torch

    return sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d)
               and 1 < m.in_channels < NARROW_CHANNELS and m.out_channels < NARROW_CHANNELS)


def plan_for_model(amp: AmpPlan, model) -> AmpPlan:
    """``amp`` with channels_last turned off for a model with narrow convolutions on a CPU (the
    layout whose backward kernels crashed; ``NARROW_CHANNELS`` says where)."""
    from dataclasses import replace

    if amp.channels_last and amp.device_type == "cpu" and narrow_convolutions(model):
        return replace(amp, channels_last=False)
    return amp


def to_layout(x, amp: AmpPlan):
    """``x`` in the memory layout the plan computes in (channels_last on a CPU)."""
    import torch

    return x.contiguous(memory_format=torch.channels_last) if amp.channels_last else x


def amp_words(amp: AmpPlan) -> str:
    """The plan in a few words for the training log, e.g. "bf16 autocast, channels_last"."""
    words = "fp32" if not amp.enabled else f"{amp.dtype} autocast"
    return words + (", channels_last" if amp.channels_last else "") + (", grad scaler" if amp.grad_scaler else "")
