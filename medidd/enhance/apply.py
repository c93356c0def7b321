"""Apply a trained model to a whole volume and return the result on the volume's own grid.

The model was trained on slices made by :func:`medidd.preprocess.pipeline.preprocess_volume`:
intensities windowed to [0, 1], in-plane resampled to square pixels, cropped to the body,
padded to a square and resized to ``size`` x ``size``. :class:`ModelGrid` makes the same
geometry for every axial slice of a volume (``to_model``) and maps an image on that grid back
onto the volume's pixels (``from_model``).

The enhanced volume is the input plus the model's *correction* (output - input on the model
grid) mapped back to the input grid and scaled to native units: intensities outside the
window (bone above +1000 HU, metal) and detail finer than the model grid are kept as they were,
and only what the model changed is changed. A model trained at 128 px corrects structure at
that scale; for full-resolution results train with a larger ``preprocess.size``.

Example:
    >>> import numpy as np, torch
    >>> from medidd.io.volume import Volume
    >>> from medidd.model import ModelCard
    >>> from medidd.nets import NetConfig
    >>> card = ModelCard.describe(NetConfig(name="dncnn", width=4, depth=2), task="denoise",
    ...                           modality="CT", degradation={"kind": "ct_lowdose"})
    >>> data = np.full((3, 40, 50), -1000.0, np.float32); data[:, 8:32, 10:40] = 40.0
    >>> vol = Volume(data, (2.0, 0.8, 0.8), "CT", "p-1", "s-1")
    >>> out = enhance_volume(torch.nn.Identity(), vol, card)  # identity: nothing changes
    >>> out.shape, float(np.abs(out - data).max()) < 1e-3
    ((3, 40, 50), True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from medidd.io.volume import Volume
from medidd.model import ModelCard
from medidd.preprocess.pipeline import PreprocessConfig, native_window
from medidd.train.evaluate import enhance

#: ``progress(done, total)`` over slices.
SliceProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelGrid:
    """The model-grid geometry of one volume's axial slices.

    ``square`` (H', W') is the in-plane size after resampling to square pixels of the finer
    spacing; ``box`` (y0, y1, x0, x1) the body crop on that grid; ``pad`` (top, left) where the
    crop sits in the ``side`` x ``side`` square; ``size`` the model's input side; ``square_mm``
    the pixel size (mm) of the square grid.
    """

    native: tuple[int, int]
    square: tuple[int, int]
    box: tuple[int, int, int, int]
    side: int
    pad: tuple[int, int]
    size: int
    square_mm: float = 1.0

    @property
    def pixel_mm(self) -> float:
        """In-plane pixel size (mm) of the model grid: what one pixel of a training slice
        (and of a distilled image) of this volume measures."""
        return self.side * self.square_mm / self.size

    @classmethod
    def fit(cls, norm: torch.Tensor, spacing_yx: tuple[float, float],
            cfg: PreprocessConfig) -> ModelGrid:
        """The grid for ``norm`` (Z, H, W) in [0, 1], as ``preprocess_volume`` would crop it.

        Example:
            >>> x = torch.zeros(2, 20, 30); x[:, 5:15, 5:25] = 1
            >>> g = ModelGrid.fit(x, (1.0, 1.0), PreprocessConfig(size=16, crop_margin_px=0))
            >>> g.box, g.side, g.pad, g.pixel_mm
            ((5, 15, 5, 25), 20, (5, 0), 1.25)
        """
        h, w = int(norm.shape[-2]), int(norm.shape[-1])
        sy, sx = spacing_yx
        pix = min(sy, sx)
        square = (h, w)
        if abs(sy - sx) > 1e-3 * pix:
            square = (max(1, round(h * sy / pix)), max(1, round(w * sx / pix)))
        y0, y1, x0, x1 = 0, square[0], 0, square[1]
        if cfg.foreground_crop:
            body = _to_square(norm, square) > cfg.body_threshold
            if bool(body.any()):
                rows = torch.nonzero(body.any(dim=0).any(dim=1)).flatten()
                cols = torch.nonzero(body.any(dim=0).any(dim=0)).flatten()
                m = cfg.crop_margin_px
                y0, y1 = max(0, int(rows[0]) - m), min(square[0], int(rows[-1]) + 1 + m)
                x0, x1 = max(0, int(cols[0]) - m), min(square[1], int(cols[-1]) + 1 + m)
        side = max(y1 - y0, x1 - x0)
        pad = ((side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2)
        return cls((h, w), square, (y0, y1, x0, x1), side, pad, cfg.size, float(pix))

    def to_model(self, norm: torch.Tensor) -> torch.Tensor:
        """(Z, H, W) native slices -> (Z, 1, size, size) model inputs (area interpolation)."""
        y0, y1, x0, x1 = self.box
        crop = _to_square(norm, self.square)[:, y0:y1, x0:x1]
        top, left = self.pad
        canvas = torch.zeros(crop.shape[0], self.side, self.side, dtype=crop.dtype)
        canvas[:, top:top + (y1 - y0), left:left + (x1 - x0)] = crop
        return F.interpolate(canvas[:, None], size=(self.size, self.size), mode="area")

    def from_model(self, image: torch.Tensor) -> torch.Tensor:
        """(Z, 1, size, size) on the model grid -> (Z, H, W) on the native grid (bilinear);
        zero outside the crop box."""
        y0, y1, x0, x1 = self.box
        top, left = self.pad
        square = F.interpolate(image, size=(self.side, self.side), mode="bilinear",
                               align_corners=False)[:, 0]
        full = torch.zeros(image.shape[0], *self.square, dtype=image.dtype)
        full[:, y0:y1, x0:x1] = square[:, top:top + (y1 - y0), left:left + (x1 - x0)]
        if self.square == self.native:
            return full
        return F.interpolate(full[:, None], size=self.native, mode="bilinear",
                             align_corners=False)[:, 0]


def _to_square(x: torch.Tensor, square: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == square:
        return x
    return F.interpolate(x[:, None], size=square, mode="bilinear", align_corners=False)[:, 0]


def model_pixel_mm(volume: Volume, cfg: PreprocessConfig) -> float:
    """In-plane pixel size (mm) of ``volume``'s slices after preprocessing with ``cfg``.

    Example:
        >>> data = np.full((3, 40, 50), -1000.0, np.float32); data[:, 8:32, 10:40] = 40.0
        >>> vol = Volume(data, (2.0, 0.8, 0.8), "CT", "p-1", "s-1")
        >>> round(model_pixel_mm(vol, PreprocessConfig(size=32, crop_margin_px=0)), 3)
        0.75
    """
    data = torch.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32))
    lo, hi = native_window(data, volume.modality, cfg)
    norm = ((data - lo) / (hi - lo)).clamp_(0.0, 1.0)
    return ModelGrid.fit(norm, (volume.spacing[1], volume.spacing[2]), cfg).pixel_mm


def enhance_volume(model: nn.Module, volume: Volume, card: ModelCard, *,
                   batch_size: int = 8, progress: SliceProgress | None = None
                   ) -> npt.NDArray[np.float32]:
    """``volume`` enhanced by ``model``, in native units (HU for CT), on the volume's grid.

    Every axial slice is windowed with the card's window (MR: the volume's percentiles),
    mapped to the model grid, enhanced, and the correction (output - input) is mapped back
    and added to the input (see the module docstring).

    Args:
        model: the trained net (:func:`medidd.model.load_model`).
        volume: a canonical axial volume from :mod:`medidd.io`.
        card: the model's card (window, preprocessing).
        batch_size: slices per forward pass.
        progress: ``progress(done, total)`` after each batch of slices.

    Returns:
        float32 (Z, H, W) like ``volume.data``.
    """
    pre = card.preprocess
    data = torch.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32))
    if volume.modality == "CT" and card.window is not None:
        lo, hi = card.window
    else:
        lo, hi = native_window(data, volume.modality, pre)
    norm = ((data - lo) / (hi - lo)).clamp_(0.0, 1.0)
    grid = ModelGrid.fit(norm, (volume.spacing[1], volume.spacing[2]), pre)
    out = np.empty_like(volume.data, dtype=np.float32)
    n = volume.n_slices
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        x = grid.to_model(norm[start:stop]).clamp_(0.0, 1.0)
        delta = enhance(model, x, batch_size=batch_size) - x
        correction = grid.from_model(delta) * (hi - lo)
        out[start:stop] = (data[start:stop] + correction).numpy()
        if progress is not None:
            progress(stop, n)
    return out
