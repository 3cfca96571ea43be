"""Batch augmentation for chest X-rays, in torch, on whatever device the batch lives on.

One random affine per image (rotation within +-10 deg, shift within +-8 % of the side, isotropic
scale 0.9-1.1) is sampled once and applied through ``affine_grid`` / ``grid_sample`` to the image
and to its masks alike, so masks stay aligned with the anatomy (masks are resampled bilinearly and
thresholded at 0.5, which keeps edges smoother than nearest-neighbour). Brightness and contrast
jitter touch the image only. There is no horizontal flip by default: anatomy is lateralised (the
heart sits on the patient's left) and mirrored films are not what a deployed model meets;
``hflip=True`` exists for users who want it anyway.

The ``robust`` preset adds what another hospital's films bring: a gamma curve (exposure and
display LUTs), resampling down and back up (detector resolution, resized exports), sensor
noise, and a black frame with burnt-in text or side markers. These draws come after the basic ones, so the ``basic`` preset's draws are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from covidedge.errors import BadInputError

__all__ = ["AugmentConfig", "BatchAugment", "AUGMENT_PRESETS", "augment_preset"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms. Angles in degrees; shift as a fraction of the image side;
    brightness as an additive offset in [0, 1] intensity units; contrast as a relative factor."""

    rotation_deg: float = 10.0
    shift: float = 0.08
    scale: Tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.10
    contrast: float = 0.15
    hflip: bool = False
    #: gamma drawn log-uniformly in [exp(-g), exp(g)]; 0 = off
    gamma: float = 0.0
    #: resample to a side factor drawn in [1 - r, 1] and back (bilinear); 0 = off
    resample: float = 0.0
    #: Gaussian noise with a standard deviation drawn in [0, noise] (intensity units); 0 = off
    noise: float = 0.0
    #: probability of a black frame (up to 8 % of the side) with bright burnt-in marks (text,
    #: side markers) near its edges; 0 = off
    border: float = 0.0

    def __post_init__(self):
        lo, hi = (float(v) for v in self.scale)
        if not (0 < lo <= hi):
            raise BadInputError(f"augmentation scale range {self.scale} is invalid; "
                                 "expected 0 < low <= high, e.g. (0.9, 1.1)")
        if not 0.0 <= self.border <= 1.0:
            raise BadInputError(f"augmentation border={self.border} is outside [0, 1]")
        if not 0.0 <= self.resample < 1.0:
            raise BadInputError(f"augmentation resample={self.resample} is outside [0, 1)")
        for name in ("rotation_deg", "shift", "brightness", "contrast", "gamma", "noise"):
            if getattr(self, name) < 0:
                raise BadInputError(f"augmentation {name}={getattr(self, name)} is negative; "
                                    "expected a range half-width >= 0")
        object.__setattr__(self, "scale", (lo, hi))

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["scale"] = list(self.scale)
        return d


class BatchAugment:
    """Callable ``(images, masks=None, generator=None) -> (images, masks)`` on NCHW float tensors.

    ``images`` are in [0, 1] and stay there; ``masks`` (N, C, H, W) with values 0/1 come back as
    0/1 floats of the same dtype. ``generator`` (a CPU ``torch.Generator``) makes the draw
    reproducible; the random numbers are drawn on the CPU so CPU and GPU runs see the same ones.
    """

    def __init__(self, config: Optional[AugmentConfig] = None, **overrides):
        base = config or AugmentConfig()
        if overrides:
            base = AugmentConfig(**{**base.to_dict(), **overrides})
        self.config = base

    def sample_params(self, n: int, generator=None) -> Dict[str, Any]:
        """Draw per-image parameters: angle (rad), scale, shift_x / shift_y (fraction of side),
        flip (bool), brightness offset and contrast factor; all CPU tensors of length ``n``."""
        import torch

        c = self.config

        def uniform(lo, hi):
            return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

        angle = uniform(-c.rotation_deg, c.rotation_deg) * (math.pi / 180.0)
        # log-uniform scale keeps zoom-in and zoom-out equally likely
        scale = torch.exp(uniform(math.log(c.scale[0]), math.log(c.scale[1])))
        shift_x = uniform(-c.shift, c.shift)
        shift_y = uniform(-c.shift, c.shift)
        flip = (torch.rand(n, generator=generator) < 0.5) if c.hflip else torch.zeros(n, dtype=torch.bool)
        brightness = uniform(-c.brightness, c.brightness)
        contrast = uniform(1.0 - c.contrast, 1.0 + c.contrast)
        p = {"angle": angle, "scale": scale, "shift_x": shift_x, "shift_y": shift_y,
             "flip": flip, "brightness": brightness, "contrast": contrast}
        if c.gamma:
            p["gamma"] = torch.exp(uniform(-c.gamma, c.gamma))
        if c.resample:
            p["resample"] = uniform(1.0 - c.resample, 1.0)
        if c.noise:
            p["noise"] = uniform(0.0, c.noise)
            p["noise_seed"] = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
        if c.border:
            p["border"] = torch.rand(n, generator=generator, dtype=torch.float64) < c.border
            p["border_width"] = uniform(0.01, 0.08)
            p["marks_seed"] = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
        return p

    @staticmethod
    def _scanner_shift(out, p):
        """Gamma, resampling and noise of the robust preset (each only when drawn)."""
        import torch
        import torch.nn.functional as F

        n, dev = out.shape[0], out.device
        if "gamma" in p:
            out = out.clamp(min=1e-6) ** p["gamma"].to(dev, torch.float32).view(n, 1, 1, 1)
        if "resample" in p:
            h, w = out.shape[2:]
            rows = []
            for i in range(n):
                f = float(p["resample"][i])
                small = F.interpolate(out[i:i + 1], size=(max(8, round(h * f)), max(8, round(w * f))),
                                      mode="bilinear", align_corners=False, antialias=True)
                rows.append(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False))
            out = torch.cat(rows)
        if "border" in p and bool(p["border"].any()):
            out = BatchAugment._frame_and_marks(out, p)
        if "noise" in p:
            g = torch.Generator().manual_seed(p["noise_seed"])
            z = torch.randn(out.shape, generator=g).to(dev)
            out = out + z * p["noise"].to(dev, torch.float32).view(n, 1, 1, 1)
        return out.clamp(0.0, 1.0)

    @staticmethod
    def _frame_and_marks(out, p):
        """A black frame and 1-3 bright rectangles (burnt-in text or side markers) near the
        frame's inner edge, on the images whose ``border`` draw is set."""
        import torch

        out = out.clone()
        h, w = out.shape[2:]
        g = torch.Generator().manual_seed(p["marks_seed"])
        for i in torch.nonzero(p["border"]).flatten().tolist():
            b = max(1, round(float(p["border_width"][i]) * min(h, w)))
            out[i, :, :b, :] = 0
            out[i, :, h - b:, :] = 0
            out[i, :, :, :b] = 0
            out[i, :, :, w - b:] = 0
            for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
                mh = max(2, h // int(torch.randint(20, 40, (1,), generator=g)))
                mw = max(2, w // int(torch.randint(6, 20, (1,), generator=g)))
                top = b + int(torch.randint(0, max(1, h // 8), (1,), generator=g))
                if bool(torch.rand(1, generator=g) < 0.5):
                    top = h - b - mh - top + b
                left = b + int(torch.randint(0, max(1, w - 2 * b - mw), (1,), generator=g))
                out[i, :, top:top + mh, left:left + mw] = 1.0
        return out

    @staticmethod
    def theta(params: Dict[str, Any]):
        """(N, 2, 3) affine matrices for ``affine_grid``: they map output coordinates to input
        coordinates in [-1, 1], so the content moves by +shift and grows by ``scale``."""
        import torch

        a, s = params["angle"], params["scale"]
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        sx = torch.where(params["flip"], -1.0, 1.0).to(torch.float64)
        # output (x, y) -> input: R(-a)/s applied to (x - t); a flip mirrors the input x axis
        tx, ty = 2.0 * params["shift_x"], 2.0 * params["shift_y"]
        row0 = torch.stack([cos * sx, sin * sx, -(cos * tx + sin * ty) * sx], dim=1)
        row1 = torch.stack([-sin, cos, -(-sin * tx + cos * ty)], dim=1)
        return torch.stack([row0, row1], dim=1)

    def __call__(self, images, masks=None, generator=None):
        import torch
        import torch.nn.functional as F

        if images.ndim != 4:
            raise BadInputError(f"augmentation input has shape {tuple(images.shape)}, expected NCHW")
        if masks is not None and (masks.ndim != 4 or masks.shape[0] != images.shape[0]
                                  or masks.shape[2:] != images.shape[2:]):
            raise BadInputError(f"masks have shape {tuple(masks.shape)}, expected "
                                f"(N={images.shape[0]}, C, {images.shape[2]}, {images.shape[3]})")
        n = images.shape[0]
        p = self.sample_params(n, generator=generator)
        theta = self.theta(p).to(device=images.device, dtype=torch.float32)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        b = p["brightness"].to(device=images.device, dtype=torch.float32).view(n, 1, 1, 1)
        k = p["contrast"].to(device=images.device, dtype=torch.float32).view(n, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * k + mean + b).clamp_(0.0, 1.0)
        out = self._scanner_shift(out, p).to(images.dtype)
        if masks is None:
            return out, None
        # the grid depends only on N, H, W: the very same sampling positions as the image
        warped = F.grid_sample(masks.float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        return out, (warped > 0.5).to(masks.dtype)


#: Named augmentation settings for ``train --augment``.
AUGMENT_PRESETS = {
    "basic": AugmentConfig(),
    "robust": AugmentConfig(gamma=0.35, resample=0.5, noise=0.03, border=0.3),
}


def augment_preset(name: str) -> AugmentConfig:
    """The AugmentConfig named ``name`` (see ``AUGMENT_PRESETS``)."""
    from covidedge.spec import check_choice

    check_choice("augmentation", name, tuple(AUGMENT_PRESETS))
    return AUGMENT_PRESETS[name]
