"""Fixtures for the package tests: real CT slices as HQ, a seeded noisy LQ, writer arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

SIZE = 32
KEYS = ("p-0123abcd", "p-4567cdef89")


@pytest.fixture(scope="session")
def real_pair(real_samples: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """4 real chest-CT slices (2 per pseudonymous patient), windowed to [0, 1], 32 px; LQ =
    HQ + seeded Gaussian noise (leaves [0, 1] a little, as real LQ does)."""
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(real_samples / "ct" / "lung1.nrrd")))
    z = np.linspace(vol.shape[0] * 0.3, vol.shape[0] * 0.7, 4).astype(int)
    step = vol.shape[1] // SIZE
    sl = vol[z, : SIZE * step, : SIZE * step].astype(np.float32)
    sl = sl.reshape(4, SIZE, step, SIZE, step).mean(axis=(2, 4))
    hq = torch.from_numpy(np.clip((sl + 1000.0) / 2000.0, 0.0, 1.0)).unsqueeze(1).contiguous()
    gen = torch.Generator().manual_seed(0)
    lq = hq + 0.05 * torch.randn(hq.shape, generator=gen)
    assert hq.std() > 0.05 and float(lq.min()) < 0.0  # real anatomy, LQ outside [0, 1]
    return hq, lq


@pytest.fixture()
def fields() -> dict[str, Any]:
    """Manifest fields for write_package (everything but the arrays and the path)."""
    return {
        "task": "denoise", "modality": "CT",
        "degradation": {"kind": "gaussian", "sigma": 0.05, "seed": 0},
        "window": (-1000.0, 1000.0), "patients": [(KEYS[0], 2), (KEYS[1], 2)], "ipc": 2,
        "method": "spg_gm", "seed": 7,
        "method_config": {"prior": "mean", "spg": {"lr": 0.01, "steps": 100}},
    }
