"""MR super-resolution degradation by k-space truncation.

An MR scanner samples k-space (the 2D Fourier transform of the slice); a lower-resolution
acquisition samples only its centre. We simulate one on the HR grid:

1. ``K = FFT2(hq)`` (orthonormal), DC moved to the centre;
2. keep the central ``round(H / scale) x round(W / scale)`` block (frequencies
   ``[-M/2, M/2)`` along each axis, the same block as a numpy ``fftshift`` crop), optionally
   apodised by a separable Hamming or Tukey (alpha 0.5) taper to soften Gibbs ringing;
3. optional acquisition noise: complex Gaussian noise on the *acquired* samples only, scaled so
   that each of the real and imaginary channels of the LQ image carries noise of standard
   deviation ``noise_sigma`` (normalised units);
4. zero-fill the rest of k-space, inverse FFT, take the magnitude.

The result is the LR acquisition interpolated onto the HR grid by zero-filling (sinc
interpolation), so every SR network is same-size image-to-image; with noise, the magnitude makes
it Rician. Deterministic without noise; the noise is drawn from ``seed``.

Example:
    >>> import torch
    >>> hq = torch.rand(2, 1, 32, 32)
    >>> lq = kspace_truncate(hq, scale=2)
    >>> lq.shape
    torch.Size([2, 1, 32, 32])
    >>> bool(torch.allclose(lq, kspace_truncate(hq, scale=2)))
    True
"""

from __future__ import annotations

import math

import torch

from medidd.degrade._random import Seed, check_images, standard_normal
from medidd.degrade.noise import magnitude
from medidd.lookup import look_up_option

TAPERS = ("none", "hamming", "tukey")


def _window_1d(n: int, keep: int, taper: str, dtype: torch.dtype) -> torch.Tensor:
    """Length-``n`` centred profile: ``keep`` samples around DC (index ``n // 2``)."""
    k = torch.arange(n, dtype=torch.float64) - n // 2  # frequency offset from DC
    lo = -(keep // 2)
    inside = (k >= lo) & (k < lo + keep)
    half = keep / 2.0
    if taper == "hamming":
        profile = 0.54 + 0.46 * torch.cos(math.pi * k / half)
    elif taper == "tukey":
        alpha = 0.5
        flat = (1 - alpha) * half
        ramp = 0.5 * (1 + torch.cos(math.pi * (k.abs() - flat) / (alpha * half)))
        profile = torch.where(k.abs() <= flat, torch.ones_like(k), ramp)
    else:
        profile = torch.ones_like(k)
    return (profile * inside).to(dtype)


def kspace_mask(
    height: int,
    width: int,
    scale: float,
    taper: str = "none",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(H, W) real k-space weights in ``fftshift`` layout (DC at ``(H // 2, W // 2)``).

    Example:
        >>> m = kspace_mask(8, 8, 2)
        >>> int(m.sum()), m[4, 4].item(), m[0, 0].item()
        (16, 1.0, 0.0)
    """
    taper = look_up_option(taper, TAPERS, what="k-space taper")
    if not scale >= 1:
        raise ValueError(f"k-space SR scale must be >= 1, got {scale}")
    keep_h = max(1, round(height / scale))
    keep_w = max(1, round(width / scale))
    rows = _window_1d(height, keep_h, taper, torch.float64)
    cols = _window_1d(width, keep_w, taper, torch.float64)
    return (rows[:, None] * cols[None, :]).to(device=device, dtype=dtype)


def kspace_truncate(
    hq: torch.Tensor,
    scale: float,
    *,
    taper: str = "none",
    noise_sigma: float = 0.0,
    seed: Seed | None = None,
) -> torch.Tensor:
    """Low-resolution MR simulation: keep the central 1/``scale`` of k-space, zero-fill, magnitude.

    Args:
        hq: (N, 1, H, W) normalised HR images.
        scale: SR factor (2, 4, ...): the kept band is ``round(H / scale)`` x ``round(W / scale)``.
        taper: ``"none"`` (rectangular), ``"hamming"`` or ``"tukey"`` apodisation of the band.
        noise_sigma: per-channel std of the complex acquisition noise in the LQ image
            (normalised units); 0 disables it.
        seed: required when ``noise_sigma > 0``.

    Returns:
        (N, 1, H, W) LQ magnitude images on the HR grid.

    Example:
        >>> import torch
        >>> kspace_truncate(torch.rand(1, 1, 16, 16), 4, noise_sigma=0.01, seed=3).shape
        torch.Size([1, 1, 16, 16])
    """
    check_images(hq, "kspace_truncate")
    if noise_sigma < 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    height, width = int(hq.shape[-2]), int(hq.shape[-1])
    mask = kspace_mask(height, width, scale, taper, dtype=hq.dtype, device=hq.device)
    spectrum = torch.fft.fftshift(torch.fft.fft2(hq, norm="ortho"), dim=(-2, -1))
    if noise_sigma > 0:
        if seed is None:
            raise ValueError("kspace_truncate: noise_sigma > 0 needs a seed")
        # Image-domain variance per channel = s^2 * sum(mask^2) / (H W) with orthonormal FFTs.
        s = noise_sigma * math.sqrt(height * width / float((mask * mask).sum()))
        noise = standard_normal((2, *hq.shape), hq, seed, batch_dim=1)
        spectrum = spectrum + s * torch.complex(noise[0], noise[1])
    spectrum = spectrum * mask
    image = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm="ortho")
    return magnitude(image.real, image.imag)
