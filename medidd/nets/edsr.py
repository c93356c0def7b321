"""EDSR-lite (Lim et al., 2017) without the upsampler: the input is already on the HR grid.

Example:
    >>> import torch
    >>> EDSR(width=16, depth=2)(torch.rand(2, 1, 24, 24)).shape
    torch.Size([2, 1, 24, 24])
"""

from __future__ import annotations

import torch
from torch import nn


class ResBlock(nn.Module):
    """conv-ReLU-conv with a scaled identity shortcut and no BatchNorm (EDSR's block)."""

    def __init__(self, width: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


class EDSR(nn.Module):
    """Head conv, ``depth`` residual blocks + a conv with a long skip, tail conv, plus the input.

    The global input residual stands in for EDSR's upsampler: the net learns the correction of
    an image already resampled onto the HR grid. Parameters: ``10w + depth*2*(9w^2+w) + 9w^2 + w
    + 9w + 1``; the default ``width=32, depth=4`` has 83,841; EDSR-baseline sizes
    (``width=64, depth=16``) have 1,219,841.

    Args:
        in_channels: image channels.
        width: feature channels.
        depth: number of residual blocks.
        res_scale: scale of each block's residual (EDSR uses 0.1 for wide nets).
        residual: add the input image to the output.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        depth: int = 4,
        res_scale: float = 1.0,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"EDSR depth (residual blocks) must be >= 0, got {depth}")
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.body = nn.Sequential(
            *[ResBlock(width, res_scale) for _ in range(depth)],
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.tail = nn.Conv2d(width, in_channels, 3, padding=1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        out = self.tail(feat + self.body(feat))
        return x + out if self.residual else out
