"""NIfTI export: one HQ and one LQ stack per patient that nibabel reads back exactly (in HU,
with the real in-plane pixel size when it is given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from medidd.package import PackageError, export_nifti, write_package

from .conftest import KEYS


@pytest.mark.parametrize("as_zip", [False, True])
def test_export_matches_the_package(tmp_path: Path, real_pair: tuple[torch.Tensor, torch.Tensor],
                                    fields: dict[str, Any], as_zip: bool) -> None:
    hq, lq = real_pair
    pkg = write_package(tmp_path / "pkg", hq, lq, **fields, zip=as_zip)
    paths = export_nifti(pkg, tmp_path / "view", pixel_mm={KEYS[0]: 0.75})
    assert [p.name for p in paths] == [f"{k}_{a}.nii.gz" for k in KEYS for a in ("hq", "lq")]
    lo, hi = fields["window"]
    for i, key in enumerate(KEYS):
        mm = 0.75 if i == 0 else 1.0  # the pixel size given, else 1 mm nominal
        for name, arr in (("hq", hq), ("lq", lq)):
            img: Any = nib.load(tmp_path / "view" / f"{key}_{name}.nii.gz")
            assert img.shape == (32, 32, 2)
            assert img.header.get_zooms() == (mm, mm, 1.0)
            assert np.array_equal(img.affine, np.diag([-mm, -mm, 1.0, 1.0]))
            data = np.asarray(img.dataobj, dtype=np.float32)
            back = np.transpose(data, (2, 1, 0))  # (K, H, W)
            np.testing.assert_allclose(back, lo + arr[2 * i : 2 * i + 2, 0].numpy() * (hi - lo),
                                       rtol=0, atol=1e-3)
            assert img.header["descrip"].item() == b""
    assert [p.name for p in (tmp_path / "view").iterdir() if p.name.startswith(".")] == []
    export_nifti(pkg, tmp_path / "norm", native=False)  # the package's own [0, 1] values
    img = nib.load(tmp_path / "norm" / f"{KEYS[0]}_hq.nii.gz")
    assert np.array_equal(np.transpose(np.asarray(img.dataobj), (2, 1, 0)), hq[:2, 0].numpy())


def test_export_refuses_an_invalid_package(tmp_path: Path,
                                           real_pair: tuple[torch.Tensor, torch.Tensor],
                                           fields: dict[str, Any]) -> None:
    pkg = write_package(tmp_path / "pkg", *real_pair, **fields)
    (pkg / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(PackageError, match=r"IM0001\.dcm: unexpected file"):
        export_nifti(pkg, tmp_path / "view")
    assert not (tmp_path / "view").exists()
