"""MONAI transform pipelines that turn a :class:`~medidd.io.Volume` into training slices.

Per modality, one slice stack is produced as follows (each step a MONAI array transform, with
the axial slices treated as channels of a 2D image so that every slice gets the same geometry):

1. ``Spacing``: in-plane resampling to square pixels (the finer of the two pixel spacings).
2. Intensity normalisation to [0, 1]: CT by a Hounsfield window (``ScaleIntensityRange``,
   clipped); MR by percentile clipping over the whole volume (``ScaleIntensityRangePercentiles``).
3. ``CropForeground``: the bounding box of the body (union over slices) plus a margin.
4. ``SpatialPad`` to a square, then ``Resize`` to ``size`` x ``size`` (area interpolation,
   i.e. anti-aliased when shrinking).
5. Slice extraction: slices whose body fraction is below ``min_foreground`` (air above the head,
   below the feet) are dropped; each kept slice records its normalised axial position ``z``.

Example:
    >>> import numpy as np
    >>> from medidd.io import Volume
    >>> data = np.full((5, 40, 60), -1000.0, np.float32)
    >>> data[:, 10:30, 10:50] = 40.0
    >>> vol = Volume(data, (5.0, 0.8, 0.8), modality="CT", patient_key="p-00", series_key="s-0")
    >>> s = preprocess_volume(vol, PreprocessConfig(size=32))
    >>> tuple(s.images.shape), s.window
    ((5, 1, 32, 32), (-1000.0, 1000.0))
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CropForeground,
    Resize,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Spacing,
    SpatialPad,
)
from pydantic import Field, model_validator

from medidd.config import StrictModel
from medidd.io.volume import Volume
from medidd.preprocess.slices import SliceSet

logger = logging.getLogger(__name__)


class PreprocessConfig(StrictModel):
    """How volumes become slices. The window is recorded in every package manifest.

    ``size`` is the in-plane size of every slice (128 on CPU; 256/512 on a GPU). ``ct_window``
    is in HU. ``mr_percentiles`` are the lower/upper percentiles mapped to 0 and 1.
    ``body_threshold`` is the normalised intensity above which a pixel counts as body.
    """

    size: int = Field(128, ge=16, le=1024)
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    foreground_crop: bool = True
    crop_margin_px: int = Field(4, ge=0)
    body_threshold: float = Field(0.25, ge=0.0, le=1.0)
    min_foreground: float = Field(0.05, ge=0.0, le=1.0)
    max_slices_per_volume: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_ranges(self) -> PreprocessConfig:
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window low must be below high, got {self.ct_window}")
        lo, hi = self.mr_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {lo, hi}")
        return self


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor: MONAI transforms return MetaTensors, which must not leave preprocessing."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def native_window(data: torch.Tensor, modality: str, cfg: PreprocessConfig
                  ) -> tuple[float, float]:
    """The (low, high) native intensities that preprocessing maps to 0 and 1: the HU window
    for CT, the volume's ``mr_percentiles`` for MR (on at most ~2M evenly strided voxels).

    Example:
        >>> native_window(torch.arange(101.0), "MR", PreprocessConfig(mr_percentiles=(10, 90)))
        (10.0, 90.0)
    """
    if modality == "CT":
        return float(cfg.ct_window[0]), float(cfg.ct_window[1])
    plo, phi = cfg.mr_percentiles
    arr = torch.as_tensor(data).float().flatten()
    arr = arr[:: max(1, arr.numel() // 2_000_000)]
    lo = float(torch.quantile(arr, plo / 100.0))
    hi = float(torch.quantile(arr, phi / 100.0))
    return lo, (hi if hi > lo else lo + 1.0)


def _normalise(
    x: MetaTensor, modality: str, cfg: PreprocessConfig
) -> tuple[torch.Tensor, tuple[float, float]]:
    if modality == "CT":
        lo, hi = cfg.ct_window
        out = ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)(x)
        return torch.as_tensor(out), (float(lo), float(hi))
    plo, phi = cfg.mr_percentiles
    window = native_window(x.as_tensor(), modality, cfg)
    out = ScaleIntensityRangePercentiles(plo, phi, 0.0, 1.0, clip=True)(x)
    return torch.as_tensor(out), window


def preprocess_volume(volume: Volume, cfg: PreprocessConfig | None = None) -> SliceSet:
    """Turn one volume into a :class:`SliceSet` of ``cfg.size`` px slices in [0, 1].

    Raises ``ValueError`` if no slice has enough body (``min_foreground``), naming the series.
    """
    cfg = cfg or PreprocessConfig()
    _, sy, sx = volume.spacing
    data = torch.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32))
    affine = torch.diag(torch.tensor([sy, sx, 1.0], dtype=torch.float64))
    img: torch.Tensor = MetaTensor(data, affine=affine)
    pix = min(sy, sx)
    if abs(sy - sx) > 1e-3 * pix:
        img = Spacing(pixdim=(pix, pix), mode="bilinear", padding_mode="border")(img)
    norm, window = _normalise(MetaTensor(img), volume.modality, cfg)
    thr = cfg.body_threshold

    def body(x: torch.Tensor) -> torch.Tensor:
        return x > thr

    if cfg.foreground_crop and bool((norm > thr).any()):
        norm = torch.as_tensor(CropForeground(select_fn=body, margin=cfg.crop_margin_px)(norm))
    h, w = norm.shape[-2:]
    side = max(h, w)
    norm = torch.as_tensor(SpatialPad((side, side), mode="constant", value=0.0)(norm))
    norm = _plain(Resize((cfg.size, cfg.size), mode="area")(norm)).clamp_(0.0, 1.0)
    fraction = (norm > thr).float().mean(dim=(1, 2))
    keep = torch.nonzero(fraction >= cfg.min_foreground).flatten()
    if keep.numel() == 0:
        raise ValueError(
            f"series {volume.series_key}: no slice has at least {cfg.min_foreground:.0%} body "
            f"pixels; lower preprocess.min_foreground or check the window"
        )
    if cfg.max_slices_per_volume is not None and keep.numel() > cfg.max_slices_per_volume:
        idx = torch.linspace(0, keep.numel() - 1, cfg.max_slices_per_volume).round().long()
        keep = keep[idx]
    n = volume.n_slices
    z = keep.float() / max(n - 1, 1)
    images = norm[keep].unsqueeze(1).contiguous().float()
    return SliceSet(images, z, volume.patient_key, volume.modality, window)
