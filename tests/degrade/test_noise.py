"""Gaussian and Rician noise: levels, seeding, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from medidd.degrade.noise import gaussian_noise, rician_noise


def test_gaussian_level_and_seed(ct_real: tuple[torch.Tensor, float]) -> None:
    hq = ct_real[0].repeat(4, 1, 1, 1)
    lq = gaussian_noise(hq, 0.04, seed=0)
    assert float((lq - hq).std()) == pytest.approx(0.04, rel=0.02)
    assert torch.equal(lq, gaussian_noise(hq, 0.04, seed=torch.Generator().manual_seed(0)))
    assert not torch.allclose(lq, gaussian_noise(hq, 0.04, seed=1))
    # Different images in a batch get different noise.
    assert not torch.allclose(lq[0] - hq[0], lq[1] - hq[1])


def test_rician_statistics() -> None:
    sigma = 0.05
    background = rician_noise(torch.zeros(4, 1, 128, 128), sigma, seed=0)
    assert float(background.mean()) == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)
    bright = rician_noise(torch.full((4, 1, 128, 128), 0.8), sigma, seed=0)
    # E[M^2] = A^2 + 2 sigma^2 for a Rician magnitude.
    assert float((bright**2).mean()) == pytest.approx(0.8**2 + 2 * sigma**2, rel=0.01)
    assert float(bright.std()) == pytest.approx(sigma, rel=0.05)


def test_rician_gradient_finite_at_zero() -> None:
    hq = torch.zeros(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(rician_noise(hq, 0.0, seed=0).sum(), hq)
    assert torch.isfinite(grad).all()
    hq2 = torch.rand(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rician_noise(x + 0.5, 0.1, seed=3), (hq2,))


def test_negative_sigma_rejected() -> None:
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        gaussian_noise(torch.zeros(1, 1, 4, 4), -0.1, seed=0)
