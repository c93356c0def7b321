"""DnCNN (Zhang et al., 2017): a plain conv stack that predicts the noise, ``out = x - f(x)``.

Example:
    >>> import torch
    >>> net = DnCNN(width=32, depth=5)
    >>> net(torch.rand(2, 1, 24, 24)).shape
    torch.Size([2, 1, 24, 24])
"""

from __future__ import annotations

import torch
from torch import nn


class DnCNN(nn.Module):
    """DnCNN-``depth``: conv+ReLU, ``depth - 2`` x (conv [+BN] + ReLU), conv; residual learning.

    ``depth`` counts every conv layer (the paper's DnCNN-17 is ``depth=17, width=64``). BatchNorm
    is off by default so the same net runs under Opacus (per-sample gradients forbid BatchNorm).
    Same-size: 3x3 convs with zero padding 1, any H, W.

    Parameters (no BN): ``10w + (depth - 2)(9w^2 + w) + 9w + 1``; the default ``width=32,
    depth=5`` has 28,353; the paper's DnCNN-17 (``width=64``) 555,137.

    Args:
        in_channels: image channels (1 for CT/MR).
        width: feature channels of every hidden layer.
        depth: number of conv layers, >= 2.
        batch_norm: BatchNorm after each middle conv (not usable with Opacus).
        residual: predict the residual (``x - f(x)``, the paper) instead of the image.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        depth: int = 5,
        batch_norm: bool = False,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN depth must be >= 2 conv layers, got {depth}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=False),
        ]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=False))
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x - out if self.residual else out
