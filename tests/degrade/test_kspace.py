"""MR k-space truncation against a direct numpy FFT crop of a real brain slice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medidd.degrade.kspace import kspace_mask, kspace_truncate


def _numpy_crop(img: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: centred crop of the shifted spectrum; returns the zero-filled
    HR magnitude and the LR image reconstructed from the crop alone."""
    n = img.shape[0]
    m = n // scale
    c = n // 2
    spectrum = np.fft.fftshift(np.fft.fft2(img))
    crop = spectrum[c - m // 2 : c - m // 2 + m, c - m // 2 : c - m // 2 + m]
    filled = np.zeros_like(spectrum)
    filled[c - m // 2 : c - m // 2 + m, c - m // 2 : c - m // 2 + m] = crop
    hr = np.abs(np.fft.ifft2(np.fft.ifftshift(filled)))
    lr = np.abs(np.fft.ifft2(np.fft.ifftshift(crop))) * (m * m) / (n * n)
    return hr, lr


@pytest.mark.parametrize("scale", [2, 4])
def test_matches_numpy_fft_crop(mr_real: torch.Tensor, scale: int) -> None:
    img = mr_real[0, 0].double().numpy()
    lq = kspace_truncate(mr_real.double(), scale)[0, 0].numpy()
    hr, lr = _numpy_crop(img, scale)
    np.testing.assert_allclose(lq, hr, atol=1e-12)
    # Zero-filling interpolates the LR acquisition: every scale-th pixel is the LR image.
    np.testing.assert_allclose(lq[::scale, ::scale], lr, atol=1e-12)
    assert float(np.abs(lq - img).mean()) > 1e-3  # it did degrade the slice


def test_float32_batch_and_dtype(mr_real: torch.Tensor) -> None:
    batch = torch.cat([mr_real, mr_real.flip(-1)])
    lq = kspace_truncate(batch, 2)
    assert lq.shape == batch.shape and lq.dtype == torch.float32
    torch.testing.assert_close(lq[1:], kspace_truncate(batch[1:], 2))


def test_taper_matches_numpy_window(mr_real: torch.Tensor) -> None:
    img = mr_real[0, 0].double().numpy()
    n, m = 128, 64
    k = np.arange(n) - n // 2
    inside = (k >= -m // 2) & (k < m // 2)
    w = np.where(inside, 0.54 + 0.46 * np.cos(np.pi * k / (m / 2)), 0.0)
    spectrum = np.fft.fftshift(np.fft.fft2(img)) * np.outer(w, w)
    ref = np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum)))
    lq = kspace_truncate(mr_real.double(), 2, taper="hamming")[0, 0].numpy()
    np.testing.assert_allclose(lq, ref, atol=1e-12)
    assert float(kspace_mask(128, 128, 2, "tukey").max()) == 1.0


def test_complex_noise_gives_rician_background() -> None:
    """On an empty image the LQ is |complex Gaussian|: Rayleigh with mean sigma sqrt(pi/2)."""
    sigma = 0.05
    lq = kspace_truncate(torch.zeros(8, 1, 128, 128), 2, noise_sigma=sigma, seed=0)
    assert float(lq.mean()) == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.05)
    assert float((lq**2).mean()) == pytest.approx(2 * sigma**2, rel=0.05)


def test_noise_seeding(mr_real: torch.Tensor) -> None:
    a = kspace_truncate(mr_real, 4, noise_sigma=0.02, seed=1)
    b = kspace_truncate(mr_real, 4, noise_sigma=0.02, seed=torch.Generator().manual_seed(1))
    c = kspace_truncate(mr_real, 4, noise_sigma=0.02, seed=2)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="needs a seed"):
        kspace_truncate(mr_real, 2, noise_sigma=0.02)


def test_gradients(mr_real: torch.Tensor) -> None:
    hq = mr_real.clone().requires_grad_(True)
    lq = kspace_truncate(hq, 2, noise_sigma=0.01, seed=0)
    (grad,) = torch.autograd.grad(lq.sum(), hq)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    zero = torch.zeros(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    (grad0,) = torch.autograd.grad(kspace_truncate(zero, 2).sum(), zero)
    assert torch.isfinite(grad0).all()


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="did you mean 'tukey'"):
        kspace_truncate(torch.zeros(1, 1, 8, 8), 2, taper="tukei")
