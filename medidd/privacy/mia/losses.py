"""Per-image losses of an enhancement model: the raw material of every membership attack.

Example:
    >>> import torch
    >>> model = torch.nn.Identity()
    >>> hq = torch.zeros(3, 1, 8, 8)
    >>> lq = hq + 0.1
    >>> out = per_image_losses(model, lq, hq, batch_size=2)
    >>> [round(v, 4) for v in out.mse.tolist()], [round(v, 1) for v in out.psnr.tolist()]
    ([0.01, 0.01, 0.01], [20.0, 20.0, 20.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PerImageLosses:
    """``mse`` (N,) mean squared error of each image; ``psnr`` (N,) its PSNR in dB for the given
    data range (``inf`` where the MSE is exactly 0). Both float64 on the CPU."""

    mse: torch.Tensor
    psnr: torch.Tensor


@torch.no_grad()
def per_image_losses(
    model: nn.Module,
    lq: torch.Tensor,
    hq: torch.Tensor,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    data_range: float = 1.0,
) -> PerImageLosses:
    """MSE and PSNR of ``model(lq)`` against ``hq``, image by image, without gradients.

    The model is put in eval mode for the pass and returned to its previous mode afterwards.

    Args:
        model: an image-to-image network, (B, C, H, W) -> (B, C, H, W).
        lq: (N, C, H, W) inputs (low quality).
        hq: (N, C, H, W) targets (high quality), same shape as ``lq``'s prediction.
        batch_size: images per forward pass.
        device: where to run the model (the inputs are moved batch by batch).
        data_range: the intensity range used for PSNR (1.0 for images in [0, 1]).

    Returns:
        :class:`PerImageLosses` with (N,) float64 tensors on the CPU.
    """
    if lq.shape[0] != hq.shape[0]:
        raise ValueError(f"lq has {lq.shape[0]} images but hq has {hq.shape[0]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, lq.shape[0], batch_size):
            x = lq[start : start + batch_size].to(device)
            y = hq[start : start + batch_size].to(device)
            pred = model(x)
            if pred.shape != y.shape:
                raise ValueError(
                    f"model output {tuple(pred.shape)} does not match target {tuple(y.shape)}"
                )
            diff = (pred.double() - y.double()).flatten(1)
            chunks.append(diff.pow(2).mean(dim=1).cpu())
    finally:
        model.train(was_training)
    mse = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64)
    psnr = 10.0 * torch.log10(data_range**2 / mse)
    return PerImageLosses(mse=mse, psnr=psnr)
