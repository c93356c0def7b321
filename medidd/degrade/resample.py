"""CT super-resolution degradation: antialiased downsampling, then back onto the HR grid.

A thicker-pixel acquisition is simulated by low-pass filtering and decimating the HR slice by
``scale`` (``torch.nn.functional.interpolate`` with ``antialias=True`` for bilinear/bicubic,
whose kernel is widened by ``scale`` so it integrates over the LR pixel; ``"area"`` averages
``scale x scale`` blocks exactly), optionally adding Gaussian noise at the LR resolution, and
interpolating back to the HR size with bicubic interpolation, so every SR network maps
same-size images. Differentiable; deterministic unless noise is requested.

Example:
    >>> import torch
    >>> hq = torch.rand(2, 1, 32, 32)
    >>> lq = downsample_upsample(hq, scale=4)
    >>> lq.shape
    torch.Size([2, 1, 32, 32])
    >>> float((lq - hq).abs().mean()) > 0
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medidd.degrade._random import Seed, check_images, standard_normal
from medidd.lookup import look_up_option

DOWN_MODES = ("bicubic", "bilinear", "area")


def downsample_upsample(
    hq: torch.Tensor,
    scale: int,
    *,
    mode: str = "bicubic",
    noise_sigma: float = 0.0,
    seed: Seed | None = None,
) -> torch.Tensor:
    """Antialiased ``scale``-times downsampling of (N, 1, H, W) images, then bicubic back to H x W.

    Args:
        hq: (N, 1, H, W) normalised HR images.
        scale: integer factor (2, 4, ...); the LR grid is ``(H // scale, W // scale)``.
        mode: downsampling kernel, ``"bicubic"`` or ``"bilinear"`` (antialiased) or ``"area"``.
        noise_sigma: std of Gaussian noise added on the LR grid (normalised units).
        seed: required when ``noise_sigma > 0``.

    Example:
        >>> import torch
        >>> flat = torch.full((1, 1, 16, 16), 0.3)
        >>> bool(torch.allclose(downsample_upsample(flat, 2, mode="area"), flat))
        True
    """
    check_images(hq, "downsample_upsample")
    mode = look_up_option(mode, DOWN_MODES, what="downsampling mode")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"CT SR scale must be a positive integer, got {scale}")
    if noise_sigma < 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    height, width = int(hq.shape[-2]), int(hq.shape[-1])
    small = (max(1, height // int(scale)), max(1, width // int(scale)))
    if mode == "area":
        low = F.interpolate(hq, size=small, mode="area")
    else:
        low = F.interpolate(hq, size=small, mode=mode, align_corners=False, antialias=True)
    if noise_sigma > 0:
        if seed is None:
            raise ValueError("downsample_upsample: noise_sigma > 0 needs a seed")
        low = low + noise_sigma * standard_normal(tuple(low.shape), low, seed)
    return F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
