"""Per-image PSNR and SSIM through MONAI's metrics, for images normalised to [0, 1].

Both follow the usual conventions, so numbers compare with published tables and with
``skimage.metrics`` (``peak_signal_noise_ratio(data_range=1)``; ``structural_similarity(
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``): PSNR from the
mean squared error of the whole image; SSIM with an 11-tap Gaussian window (sigma 1.5) averaged
over the valid (unpadded) region. Computed in float64.

Example:
    >>> import torch
    >>> target = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> [round(v, 2) for v in psnr(target + 0.1, target).tolist()]
    [20.0, 20.0]
    >>> ssim(target, target).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from typing import cast

import torch
from monai.metrics import PSNRMetric, SSIMMetric

SSIM_WINDOW = 11


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"metrics need two (N, C, H, W) tensors of the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image, shape (N,).

    Args:
        pred: (N, C, H, W) estimate.
        target: (N, C, H, W) reference.
        data_range: the peak value (1.0 for normalised images).

    Example:
        >>> import torch
        >>> values = psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.1))
        >>> [round(v, 4) for v in values.tolist()]
        [20.0]
    """
    _check(pred, target)
    metric = PSNRMetric(max_val=data_range, reduction="none")
    out = cast(torch.Tensor, metric(pred.detach().double(), target.detach().double()))
    return out.reshape(-1)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity of each 2D image, shape (N,); images need H, W >= 11.

    Args:
        pred: (N, C, H, W) estimate.
        target: (N, C, H, W) reference.
        data_range: the value range of the images (1.0 for normalised images).

    Example:
        >>> import torch
        >>> x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        >>> ssim(x, x).tolist()
        [1.0]
    """
    _check(pred, target)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW} px per side, got {tuple(pred.shape[-2:])}"
        )
    metric = SSIMMetric(spatial_dims=2, data_range=data_range, reduction="none")
    out = cast(torch.Tensor, metric(pred.detach().double(), target.detach().double()))
    return out.reshape(-1)
