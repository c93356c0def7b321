"""NCC / SSIM / nearest-real / cross-patient reference on real CT slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from medidd.privacy.memorisation import (
    cross_patient_reference,
    cross_patient_similarities,
    memorisation_report,
    ncc,
    nearest_real,
    ssim,
)


def test_ncc_properties(ct_slices: dict[str, torch.Tensor]) -> None:
    x = ct_slices["lung1"][5, 0]
    y = ct_slices["lung2"][5, 0]
    assert ncc(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ncc(x, -x) == pytest.approx(-1.0, abs=1e-6)
    assert ncc(x, 0.3 * x + 0.5) == pytest.approx(1.0, abs=1e-6)
    assert ncc(x, 2.0 * y - 0.1) == pytest.approx(ncc(x, y), abs=1e-5)
    assert ncc(x, y) == pytest.approx(ncc(y, x), abs=1e-7)
    assert ncc(x, torch.full_like(x, 0.4)) == 0.0
    # reference: Pearson correlation of the pixels
    ref = np.corrcoef(x.numpy().ravel(), y.numpy().ravel())[0, 1]
    assert ncc(x, y) == pytest.approx(ref, abs=1e-5)
    with pytest.raises(ValueError, match="shape"):
        ncc(x, x[:10])


@pytest.mark.parametrize(("i", "j", "noise"), [(3, 3, 0.05), (2, 9, 0.0), (0, 15, 0.1)])
def test_ssim_matches_skimage(
    ct_slices: dict[str, torch.Tensor], i: int, j: int, noise: float
) -> None:
    a = ct_slices["lung1"][i, 0]
    g = torch.Generator().manual_seed(i + j)
    b = (ct_slices["lung2"][j, 0] + noise * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ref = structural_similarity(
        a.double().numpy(),
        b.double().numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(a, b) == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("metric", ["ncc", "ssim"])
def test_nearest_real_matches_brute_force(ct_slices: dict[str, torch.Tensor], metric: str) -> None:
    real = ct_slices["lung1"]
    g = torch.Generator().manual_seed(0)
    distilled = (ct_slices["lung2"][::4] + 0.05 * torch.randn(4, 1, 64, 64, generator=g)).clamp(
        0, 1
    )
    fn = ncc if metric == "ncc" else ssim
    brute = torch.tensor([[fn(d[0], r[0]) for r in real] for d in distilled])
    sim, idx = nearest_real(distilled, real, metric=metric, chunk=5)
    torch.testing.assert_close(sim, brute.max(dim=1).values, atol=1e-5, rtol=0)
    assert idx.tolist() == brute.argmax(dim=1).tolist()


def test_planted_copy_is_found(ct_slices: dict[str, torch.Tensor]) -> None:
    real = torch.cat([ct_slices["lung1"], ct_slices["lung2"]])
    g = torch.Generator().manual_seed(1)
    distilled = torch.cat([torch.rand(3, 1, 64, 64, generator=g), real[21:22]])
    sim, idx = nearest_real(distilled, real)
    assert sim[-1].item() == pytest.approx(1.0, abs=1e-5)
    assert idx[-1].item() == 21
    assert sim[:3].max().item() < 0.5
    sim_ssim, idx_ssim = nearest_real(distilled[-1:], real, metric="ssim")
    assert sim_ssim.item() == pytest.approx(1.0, abs=1e-4) and idx_ssim.item() == 21


def test_shift_tolerance(ct_slices: dict[str, torch.Tensor]) -> None:
    real = ct_slices["lung1"]
    moved = torch.roll(real[7:8], shifts=(2, -3), dims=(2, 3))
    plain, _ = nearest_real(moved, real)
    tolerant, idx = nearest_real(moved, real, max_shift=3)
    assert plain.item() < 0.95  # a few pixels of translation hides the copy from plain NCC
    assert tolerant.item() == pytest.approx(1.0, abs=1e-5) and idx.item() == 7


def test_cross_patient_reference_on_real_patients(ct_slices: dict[str, torch.Tensor]) -> None:
    sims = cross_patient_similarities(ct_slices)
    assert set(sims) == {"lung1", "lung2"} and sims["lung1"].shape == (16,)
    ref = cross_patient_reference(ct_slices, quantile=0.99)
    assert 0.0 < ref < 1.0
    assert ref == pytest.approx(
        float(np.quantile(torch.cat([sims["lung1"], sims["lung2"]]).numpy(), 0.99)), abs=1e-6
    )
    ref_ssim = cross_patient_reference(ct_slices, metric="ssim", max_per_patient=8)
    assert 0.0 < ref_ssim < 1.0
    with pytest.raises(ValueError, match="at least 2 patients"):
        cross_patient_reference({"lung1": ct_slices["lung1"]})


def test_memorisation_report_flags_a_planted_slice(ct_slices: dict[str, torch.Tensor]) -> None:
    mean_prior = torch.cat([ct_slices["lung1"][:4], ct_slices["lung2"][:4]]).reshape(
        2, 4, 1, 64, 64
    )
    distilled = torch.cat([mean_prior.mean(dim=0), ct_slices["lung2"][10:11]])
    rep = memorisation_report(distilled, ct_slices, near_copy=0.95)
    assert rep["n_images"] == 5 and len(rep["per_image"]) == 5
    assert rep["max"] == pytest.approx(1.0, abs=1e-5)
    assert rep["n_above_near_copy"] == 1
    assert rep["nearest_patient"][-1] == "lung2" and rep["nearest_slice"][-1] == 10
    assert rep["n_above_ideal"] >= 1 and 0 < rep["ideal_line"] < 1
    assert rep["ideal_quantile"] == 0.99
    assert set(rep["nearest_patient"]) <= {"lung1", "lung2"}
    with pytest.raises(ValueError, match="did you mean"):
        memorisation_report(distilled, ct_slices, metric="nccc")
