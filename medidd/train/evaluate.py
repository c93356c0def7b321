"""Evaluate an enhancement net on whole held-out slices: PSNR/SSIM of its output and of the LQ.

Example:
    >>> import torch
    >>> hq = torch.rand(3, 1, 33, 31, generator=torch.Generator().manual_seed(0))
    >>> lq = (hq + 0.05).clamp(0, 1)
    >>> res = evaluate_enhancer(torch.nn.Identity(), hq, lq, batch_size=2)
    >>> res.n, round(res.psnr - res.psnr_lq, 6)
    (3, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medidd.train.device import resolve_device
from medidd.train.metrics import psnr, ssim


@dataclass(frozen=True)
class EvalResult:
    """Mean PSNR (dB) and SSIM over ``n`` images of the enhanced output and of the LQ input,
    with the per-image values (float64 arrays of shape (n,)). Means are means of per-image
    values (the usual convention of image-enhancement tables)."""

    psnr: float
    ssim: float
    psnr_lq: float
    ssim_lq: float
    psnr_per_image: np.ndarray
    ssim_per_image: np.ndarray
    psnr_lq_per_image: np.ndarray
    ssim_lq_per_image: np.ndarray
    n: int

    @property
    def psnr_gain(self) -> float:
        """Mean PSNR improvement over the LQ input (dB)."""
        return self.psnr - self.psnr_lq

    def to_dict(self, per_image: bool = False) -> dict[str, Any]:
        """JSON-ready summary (per-image lists only if asked)."""
        out: dict[str, Any] = {
            "psnr": self.psnr,
            "ssim": self.ssim,
            "psnr_lq": self.psnr_lq,
            "ssim_lq": self.ssim_lq,
            "n": self.n,
        }
        if per_image:
            out["psnr_per_image"] = self.psnr_per_image.tolist()
            out["ssim_per_image"] = self.ssim_per_image.tolist()
        return out


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def enhance(
    model: nn.Module,
    lq: torch.Tensor,
    batch_size: int = 8,
    *,
    device: str | torch.device | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Run ``model`` on whole images in batches (eval mode, no grad); returns a CPU float32
    tensor shaped like ``lq``, clipped to [0, 1] if ``clip``. The model's train/eval mode is
    restored afterwards; it is moved to ``device`` if one is given (default: where it is).

    Example:
        >>> import torch
        >>> enhance(torch.nn.Identity(), torch.full((3, 1, 5, 7), 2.0)).max().item()
        1.0
    """
    if lq.ndim != 4:
        raise ValueError(f"lq must be (N, C, H, W), got {tuple(lq.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device) if device is not None else _model_device(model)
    model.to(dev)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.inference_mode():
            for start in range(0, lq.shape[0], batch_size):
                batch = lq[start : start + batch_size].to(device=dev, dtype=torch.float32)
                out = model(batch)
                outs.append((out.clamp(0.0, 1.0) if clip else out).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty_like(lq, dtype=torch.float32)


def evaluate_enhancer(
    model: nn.Module,
    hq: torch.Tensor,
    lq: torch.Tensor,
    batch_size: int = 8,
    *,
    device: str | torch.device | None = None,
    clip: bool = True,
) -> EvalResult:
    """PSNR/SSIM (data range 1) of ``model(lq)`` and of ``lq`` against ``hq``, whole slices.

    Args:
        model: a same-size enhancement net.
        hq: (N, 1, H, W) reference images in [0, 1]; any H, W >= 11 (SSIM window), odd too.
        lq: (N, 1, H, W) inputs.
        batch_size: images per forward pass.
        device: where to run (default: the model's device).
        clip: clip the output to [0, 1] before scoring (the images' valid range).

    Example:
        >>> import torch
        >>> hq = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> evaluate_enhancer(torch.nn.Identity(), hq, hq).ssim
        1.0
    """
    if hq.shape != lq.shape or hq.ndim != 4 or hq.shape[0] == 0:
        raise ValueError(
            f"hq and lq must be non-empty (N, C, H, W) of the same shape, got "
            f"{tuple(hq.shape)} and {tuple(lq.shape)}"
        )
    out = enhance(model, lq, batch_size, device=device, clip=clip)
    hq_cpu, lq_cpu = hq.detach().float().cpu(), lq.detach().float().cpu()
    p, s = psnr(out, hq_cpu).numpy(), ssim(out, hq_cpu).numpy().astype(np.float64)
    p_lq, s_lq = psnr(lq_cpu, hq_cpu).numpy(), ssim(lq_cpu, hq_cpu).numpy().astype(np.float64)
    return EvalResult(
        psnr=float(p.mean()),
        ssim=float(s.mean()),
        psnr_lq=float(p_lq.mean()),
        ssim_lq=float(s_lq.mean()),
        psnr_per_image=p,
        ssim_per_image=s,
        psnr_lq_per_image=p_lq,
        ssim_lq_per_image=s_lq,
        n=int(hq.shape[0]),
    )
