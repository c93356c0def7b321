"""PSNR/SSIM through MONAI agree with scikit-image on real CT slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medidd.train.metrics import psnr, ssim
from tests.train.ct_data import gaussian_noise, load_ct_slices


@pytest.fixture(scope="module")
def pairs(real_samples: Path) -> tuple[torch.Tensor, torch.Tensor]:
    # native 512 px slices and a downsized set; noisy and blurred estimates
    hq = load_ct_slices(real_samples / "ct" / "lung1.nrrd", 3, size=None)
    noisy = gaussian_noise(hq, seed=3).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(hq, 5, stride=1, padding=2)
    return torch.cat([hq, hq]), torch.cat([noisy, blurred])


def _skimage(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    p = peak_signal_noise_ratio(target, pred, data_range=1.0)
    s = structural_similarity(
        target, pred, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )
    return float(p), float(s)


def test_psnr_and_ssim_match_skimage_on_real_ct(pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    hq, est = pairs
    ours_p, ours_s = psnr(est, hq).numpy(), ssim(est, hq).numpy()
    ref = np.array([_skimage(est[i, 0].double().numpy(), hq[i, 0].double().numpy())
                    for i in range(hq.shape[0])])
    assert ours_p.shape == ours_s.shape == (hq.shape[0],)
    np.testing.assert_allclose(ours_p, ref[:, 0], atol=1e-3)
    np.testing.assert_allclose(ours_s, ref[:, 1], atol=1e-3)
    assert 0.0 < ref[:, 1].min() < 0.99  # the cases are not trivial


def test_odd_sized_images(pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    hq, est = pairs[0][:2, :, :37, :45], pairs[1][:2, :, :37, :45]
    ref = [_skimage(est[i, 0].double().numpy(), hq[i, 0].double().numpy()) for i in range(2)]
    np.testing.assert_allclose(ssim(est, hq).numpy(), [r[1] for r in ref], atol=1e-3)
    np.testing.assert_allclose(psnr(est, hq).numpy(), [r[0] for r in ref], atol=1e-3)


def test_identity_and_known_psnr() -> None:
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0])
    y = torch.full((1, 1, 16, 16), 0.5)
    assert psnr(y + 0.01, y).item() == pytest.approx(40.0, abs=1e-3)


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="at least 11 px"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
