"""Real slices and phantoms shared by the degradation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

CT_WINDOW = (-1000.0, 1000.0)


def read_slice(path: Path, size: int) -> torch.Tensor:
    """Middle axial slice of a volume, area-resampled to size x size, float32 (1, 1, S, S)."""
    import SimpleITK as sitk

    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    middle = torch.from_numpy(volume[volume.shape[0] // 2])[None, None]
    return torch.nn.functional.interpolate(middle, size=(size, size), mode="area")


def ct_slice(real_samples: Path, size: int = 128) -> tuple[torch.Tensor, float]:
    """A real chest CT slice normalised through [-1000, 1000] HU, and its pixel size in mm."""
    import SimpleITK as sitk

    path = real_samples / "ct" / "lung1.nrrd"
    image = sitk.ReadImage(str(path))
    fov_mm = image.GetSpacing()[0] * image.GetSize()[0]
    hu = read_slice(path, size)
    lo, hi = CT_WINDOW
    return ((hu.clamp(lo, hi) - lo) / (hi - lo)).contiguous(), fov_mm / size


@pytest.fixture(scope="session")
def ct_real(real_samples: Path) -> tuple[torch.Tensor, float]:
    return ct_slice(real_samples)


@pytest.fixture(scope="session")
def mr_real(real_samples: Path) -> torch.Tensor:
    """A real brain T1 slice at 128 px, scaled to [0, 1] by its 99.5th percentile."""
    raw = read_slice(real_samples / "mr" / "brain1.nrrd", 128)
    top = torch.quantile(raw.flatten(), 0.995)
    return (raw / top).clamp(0, 1).contiguous()
