"""RED-CNN (Chen et al., 2017): residual encoder-decoder CNN for low-dose CT.

Example:
    >>> import torch
    >>> RedCNN(width=8, depth=5)(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import torch
from torch import nn


class RedCNN(nn.Module):
    """``depth`` unpadded 5x5 convs (each shrinks H and W by 4), ``depth`` mirrored transposed
    convs, and shortcuts from every second encoder feature map (the input included) to the
    decoder output of the same size, each followed by ReLU as in the paper.

    Parameters (5x5 kernels): ``51w + 1 + 2(depth - 1)(25w^2 + w)``: the paper's net
    (``width=96, depth=5``) has 1,848,865, the default ``width=32, depth=5`` 206,689, and
    ``width=16`` 51,985. Inputs need ``H, W >= 4 * depth + 1`` (21 px for depth 5); odd sizes
    are fine.

    Args:
        in_channels: image channels.
        width: channels of every hidden layer (the paper: 96).
        depth: conv layers in the encoder (the paper: 5).
        kernel_size: square kernel of every layer (the paper: 5).
    """

    def __init__(
        self, in_channels: int = 1, width: int = 32, depth: int = 5, kernel_size: int = 5
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"RED-CNN depth must be >= 1, got {depth}")
        chans = [in_channels] + [width] * depth
        self.encoder = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], kernel_size) for i in range(depth)
        )
        self.decoder = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], kernel_size)
            for i in reversed(range(depth))
        )
        self.act = nn.ReLU()
        self.depth = depth
        self.min_size = (kernel_size - 1) * depth + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"RED-CNN (depth {self.depth}) needs images of at least {self.min_size} px, "
                f"got {tuple(x.shape[-2:])}; use a larger patch_size or a smaller depth"
            )
        feats = [x]
        out = x
        for conv in self.encoder:
            out = self.act(conv(out))
            feats.append(out)
        # decoder layer j restores the size of encoder map k = depth - 1 - j; shortcuts at even k
        for j, deconv in enumerate(self.decoder):
            k = self.depth - 1 - j
            out = deconv(out)
            if k % 2 == 0:
                out = out + feats[k]
            out = self.act(out)
        return out
