"""Training losses for enhancement nets: ``l1``, ``l2`` and ``l1+ssim``.

Example:
    >>> import torch
    >>> loss = build_loss("l1")
    >>> float(loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)))
    1.0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss

from medidd.lookup import look_up_option

LOSSES = ("l1", "l2", "l1+ssim")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss(name: str, ssim_weight: float = 0.84) -> LossFn:
    """The loss ``(pred, target) -> scalar`` called ``name``.

    ``l1+ssim`` is ``(1 - w) * L1 + w * (1 - SSIM)`` with ``w = ssim_weight`` (0.84 after Zhao
    et al., 2017), SSIM with an 11-px Gaussian window and data range 1, so patches must be at
    least 11 px.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> float(build_loss("l1+ssim")(x, x))
        0.0
    """
    key = look_up_option(name, LOSSES, what="loss")
    if key == "l1":
        return F.l1_loss
    if key == "l2":
        return F.mse_loss
    if not 0.0 <= ssim_weight <= 1.0:
        raise ValueError(f"ssim_weight must be in [0, 1], got {ssim_weight}")
    ssim_loss = SSIMLoss(spatial_dims=2, data_range=1.0)

    def l1_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        l1 = F.l1_loss(pred, target)
        return (1.0 - ssim_weight) * l1 + ssim_weight * ssim_loss(pred, target)

    return l1_ssim
