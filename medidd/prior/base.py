"""The shared anatomical prior every SPG distillation starts from.

Example:
    >>> import torch
    >>> p = Prior(torch.zeros(2, 1, 8, 8), torch.tensor([0.25, 0.75]), "atlas", local_data=False)
    >>> len(p)
    2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Prior:
    """The shared anatomical prior: ``images`` (K, 1, H, W) in [0, 1] at axial positions
    ``z`` (K,) in [0, 1]; ``kind`` says how it was made (mean, medoid, atlas, shared) and
    ``local_data`` says whether it holds anything of a local patient; ``info`` describes a
    shared prior for the package manifest (:class:`medidd.package.manifest.PriorInfo`)."""

    images: torch.Tensor
    z: torch.Tensor
    kind: str
    local_data: bool
    info: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def crop_where_structure_is(prior: Prior, size: int, stride: int | None = None) -> Prior:
    """The prior cut to ``size`` squares: from each prior slice, the square (on a grid of
    ``stride``, default ``size // 4``) with the most image-gradient energy inside the body
    (pixels above 0.02). Only the prior decides, so nothing of a patient chooses a patch.

    Example:
        >>> import torch
        >>> img = torch.zeros(1, 1, 32, 32); img[0, 0, 20:28, 4:12] = 1.0
        >>> p = crop_where_structure_is(Prior(img, torch.tensor([0.5]), "atlas", False), 16)
        >>> p.images.shape, float(p.images.sum())
        (torch.Size([1, 1, 16, 16]), 64.0)
    """
    n, _, h, w = prior.images.shape
    if size > min(h, w):
        raise ValueError(f"patches.size={size} is larger than the {h}x{w} slices; choose a "
                         f"size below {min(h, w)} or leave patches.size unset")
    stride = max(1, stride or size // 4)
    x = prior.images
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[..., 1:, :] = (x[..., 1:, :] - x[..., :-1, :]).abs()
    gx[..., :, 1:] = (x[..., :, 1:] - x[..., :, :-1]).abs()
    energy = (gy + gx) * (x > 0.02)
    # the energy of every size x size square on the stride grid: one average pool
    pooled = torch.nn.functional.avg_pool2d(energy, size, stride=stride)
    best = pooled.flatten(1).argmax(dim=1)
    cols = pooled.shape[-1]
    crops = []
    for i in range(n):
        y, xx = int(best[i]) // cols * stride, int(best[i]) % cols * stride
        crops.append(x[i, :, y : y + size, xx : xx + size])
    return Prior(torch.stack(crops), prior.z, prior.kind, prior.local_data, prior.info)
