"""SRCNN (Dong et al., 2014): patch extraction, non-linear mapping, reconstruction (9-1-5).

Example:
    >>> import torch
    >>> SRCNN()(torch.rand(2, 1, 24, 24)).shape
    torch.Size([2, 1, 24, 24])
"""

from __future__ import annotations

import torch
from torch import nn


class SRCNN(nn.Module):
    """SRCNN 9-1-5 on an image already resampled onto the HR grid (same-size in and out).

    Layers: conv ``k1 x k1`` (1 -> ``width``), ReLU, ``depth`` x [conv 1x1 -> ``width // 2``,
    ReLU], conv ``k3 x k3`` (-> 1); "same" zero padding so any H, W works. The paper's net is
    ``width=64, depth=1`` (64 and 32 channels, 8,129 parameters); the default here is that net.

    Args:
        in_channels: image channels.
        width: channels of the first layer; the mapping layers use ``width // 2``.
        depth: number of 1x1 mapping layers (the paper: 1).
        kernel_sizes: (first, last) kernel sizes, odd (the paper: 9 and 5).
        residual: add the input to the output (off in the paper; helps short schedules).
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        depth: int = 1,
        kernel_sizes: tuple[int, int] = (9, 5),
        residual: bool = False,
    ) -> None:
        super().__init__()
        k1, k3 = kernel_sizes
        if k1 % 2 == 0 or k3 % 2 == 0:
            raise ValueError(f"SRCNN kernel_sizes must be odd, got {kernel_sizes}")
        if depth < 1 or width < 2:
            raise ValueError(f"SRCNN needs depth >= 1 and width >= 2, got {depth}, {width}")
        mid = width // 2
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, k1, padding=k1 // 2), nn.ReLU()]
        channels = width
        for _ in range(depth):
            layers += [nn.Conv2d(channels, mid, 1), nn.ReLU()]
            channels = mid
        layers.append(nn.Conv2d(channels, in_channels, k3, padding=k3 // 2))
        self.body = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out
