"""Generic additive noise on normalised images: Gaussian and Rician.

* **Gaussian**: ``lq = hq + sigma * eps``, ``eps ~ N(0, 1)`` i.i.d. per pixel. A stand-in for
  any approximately stationary noise (``sigma`` in normalised units: 0.04 on a [-1000, 1000] HU
  window is 80 HU).
* **Rician**: the magnitude of a complex signal whose real and imaginary channels carry
  independent N(0, sigma^2) noise, ``lq = sqrt((hq + sigma e1)^2 + (sigma e2)^2)``. This is the
  noise of magnitude MR images (Gudbjartsson & Patz 1995): Gaussian-like where the signal is
  strong, a Rayleigh floor of mean ``sigma * sqrt(pi / 2)`` in the background.

Both are reparameterised (the noise is a fixed function of the seed), so gradients flow to
``hq``. Values are not clipped: LQ may leave [0, 1] slightly, which keeps the noise unbiased.

Example:
    >>> import torch
    >>> hq = torch.full((1, 1, 64, 64), 0.5)
    >>> lq = gaussian_noise(hq, 0.1, seed=0)
    >>> round(float((lq - hq).std()), 1)
    0.1
    >>> bool((rician_noise(torch.zeros(1, 1, 8, 8), 0.1, seed=0) >= 0).all())
    True
"""

from __future__ import annotations

import torch

from medidd.degrade._random import Seed, check_images, standard_normal


def _check_sigma(sigma: float) -> None:
    if not sigma >= 0:
        raise ValueError(f"noise sigma must be >= 0 (normalised units), got {sigma}")


def gaussian_noise(hq: torch.Tensor, sigma: float, seed: Seed) -> torch.Tensor:
    """Add i.i.d. Gaussian noise of standard deviation ``sigma`` (normalised units).

    Example:
        >>> import torch
        >>> gaussian_noise(torch.zeros(2, 1, 4, 4), 0.0, seed=1).abs().max().item()
        0.0
    """
    check_images(hq, "gaussian_noise")
    _check_sigma(sigma)
    return hq + sigma * standard_normal(tuple(hq.shape), hq, seed)


def rician_noise(hq: torch.Tensor, sigma: float, seed: Seed) -> torch.Tensor:
    """Magnitude of ``hq`` plus complex Gaussian noise (``sigma`` per channel, normalised units).

    Example:
        >>> import torch
        >>> lq = rician_noise(torch.zeros(1, 1, 128, 128), 0.1, seed=0)
        >>> round(float(lq.mean()), 2)  # Rayleigh mean sigma * sqrt(pi / 2)
        0.13
    """
    check_images(hq, "rician_noise")
    _check_sigma(sigma)
    noise = standard_normal((2, *hq.shape), hq, seed, batch_dim=1)
    return magnitude(hq + sigma * noise[0], sigma * noise[1])


def magnitude(real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
    """``sqrt(real^2 + imag^2)`` with a finite gradient at the origin.

    Example:
        >>> import torch
        >>> magnitude(torch.tensor([3.0]), torch.tensor([4.0])).item()
        5.0
    """
    tiny = torch.finfo(real.dtype).tiny
    return torch.sqrt((real * real + imag * imag).clamp_min(tiny))
