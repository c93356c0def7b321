"""Synthetic test objects for calibrating degradations (no patient data).

Example:
    >>> disc = water_cylinder(64)
    >>> disc.shape, float(disc.max()), float(disc[0, 0, 0, 0])
    (torch.Size([1, 1, 64, 64]), 0.5, 0.0)
"""

from __future__ import annotations

import numpy as np
import torch


def water_cylinder(
    size: int = 128,
    diameter_mm: float = 300.0,
    fov_mm: float = 400.0,
    window: tuple[float, float] = (-1000.0, 1000.0),
) -> torch.Tensor:
    """A uniform 0 HU water disc in air (-1000 HU), centred at pixel ``(size // 2, size // 2)``,
    normalised through ``window``: float32 (1, 1, size, size). Pixel size ``fov_mm / size``.

    Example:
        >>> round(float(water_cylinder(128).mean()), 3)
        0.22
    """
    yy, xx = np.mgrid[:size, :size] - size // 2
    radius = diameter_mm / 2 / (fov_mm / size)
    lo, hi = window
    inside = xx**2 + yy**2 <= radius**2
    hu = np.where(inside, 0.0, -1000.0)
    normalised = np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(normalised)[None, None]


def disc_mask(size: int, radius_px: float) -> torch.Tensor:
    """Boolean (size, size) mask of a disc of ``radius_px`` pixels about the image centre.

    Example:
        >>> int(disc_mask(16, 1).sum())
        5
    """
    yy, xx = np.mgrid[:size, :size] - size // 2
    return torch.from_numpy(xx**2 + yy**2 <= radius_px**2)
