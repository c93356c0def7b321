"""Fixtures for the federation tests: real CT slices, packages written with medidd.package,
and patients folders made of the real sample volumes (one sub-folder per patient)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medidd.package import write_package

SIZE = 32
KEYS = ("p-0123abcd", "p-4567cdef")
SPEC = {"kind": "gaussian", "noise_sigma": 0.05}


def real_ct_slices(path: Path, n: int, size: int = SIZE) -> torch.Tensor:
    """``n`` real axial slices of a CT volume, HU window [-1000, 1000] -> [0, 1], ``size`` px."""
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    z = np.linspace(vol.shape[0] * 0.3, vol.shape[0] * 0.7, n).astype(int)
    step = min(vol.shape[1], vol.shape[2]) // size
    sl = vol[z, : size * step, : size * step].reshape(n, size, step, size, step).mean(axis=(2, 4))
    return torch.from_numpy(np.clip((sl + 1000.0) / 2000.0, 0, 1)).unsqueeze(1).contiguous()


@pytest.fixture(scope="session")
def ct_hq(real_samples: Path) -> torch.Tensor:
    """4 real chest-CT slices at 32 px (the HQ side of the test packages)."""
    return real_ct_slices(real_samples / "ct" / "lung1.nrrd", 4)


MakePackage = Callable[..., Path]


@pytest.fixture()
def make_package(tmp_path: Path, ct_hq: torch.Tensor) -> MakePackage:
    """Write a package of the 4 real slices (2 patients x 2) with an audit ``status``."""
    counter = iter(range(1000))

    def make(status: str | None = "passed", **changes: Any) -> Path:
        gen = torch.Generator().manual_seed(0)
        hq = changes.pop("hq", ct_hq)
        lq = hq + 0.05 * torch.randn(hq.shape, generator=gen)
        args: dict[str, Any] = {
            "task": "denoise", "modality": "CT", "degradation": dict(SPEC),
            "window": (-1000.0, 1000.0), "patients": [(KEYS[0], 2), (KEYS[1], 2)], "ipc": 2,
            "method": "spg_gm", "seed": 0, "method_config": {"ipc": 2},
            "audit": {"status": status} if status else None,
        }
        args.update(changes)
        return write_package(tmp_path / f"pkg{next(counter)}", hq, lq, **args)

    return make


@pytest.fixture(scope="session")
def patients_dirs(real_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Patients folders (one sub-folder per patient, links to the real volumes):
    ``a``: the chest CT lung1; ``b``: the abdomen CT."""
    root = tmp_path_factory.mktemp("patients")
    out = {}
    for site, name in (("a", "lung1.nrrd"), ("b", "abdomen_3mm.nii.gz")):
        folder = root / site / "patient1"
        folder.mkdir(parents=True)
        (folder / name).symlink_to(real_samples / "ct" / name)
        out[site] = root / site
    return out
