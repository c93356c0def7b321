"""Real CT slices for the privacy tests: two chest-CT patients, windowed to [0, 1], 64 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch


def load_ct_slices(path: Path, n: int = 16, size: int = 64) -> torch.Tensor:
    """``n`` evenly spaced axial slices of a CT volume: HU window [-1000, 1000] -> [0, 1],
    area-resized to ``size`` x ``size``; (n, 1, size, size) float32."""
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    keep = np.linspace(hu.shape[0] * 0.15, hu.shape[0] * 0.85, n).round().astype(int)
    x = torch.from_numpy(np.clip((hu[keep] + 1000.0) / 2000.0, 0.0, 1.0))[:, None]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area")


@pytest.fixture(scope="session")
def ct_slices(real_samples: Path) -> dict[str, torch.Tensor]:
    """Pseudonymous key -> (16, 1, 64, 64) slices, for the two chest-CT patients."""
    return {
        "lung1": load_ct_slices(real_samples / "ct" / "lung1.nrrd"),
        "lung2": load_ct_slices(real_samples / "ct" / "lung2.nrrd"),
    }
