"""Real CT slices and the test degradation, shared by the trainer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

SIZE = 64
SIGMA = 0.05


def load_ct_slices(path: Path, n: int, size: int | None = SIZE) -> torch.Tensor:
    """``n`` evenly spaced slices from the middle 60% of a CT volume, window [-1000, 1000] HU
    -> [0, 1], area-resized to ``size`` px (None keeps the native grid); (n, 1, H, W)."""
    sitk = pytest.importorskip("SimpleITK")
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    idx = np.linspace(0.2 * volume.shape[0], 0.8 * volume.shape[0], n).astype(int)
    images = torch.from_numpy(np.clip((volume[idx] + 1000.0) / 2000.0, 0.0, 1.0))[:, None]
    if size is None:
        return images.contiguous()
    return F.interpolate(images, size=(size, size), mode="area")


def gaussian_noise(hq: torch.Tensor, seed: int) -> torch.Tensor:
    """The test degradation: additive Gaussian noise, sigma 0.05, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return hq + SIGMA * torch.randn(hq.shape, generator=gen).to(hq.device)
