"""A same-size wrapper around MONAI's ``UNet`` that accepts any H, W and learns a residual.

Example:
    >>> import torch
    >>> UNet(width=8, depth=3)(torch.rand(2, 1, 23, 30)).shape
    torch.Size([2, 1, 23, 30])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet as MonaiUNet
from torch import nn

from medidd.lookup import look_up_option

NORMS = ("instance", "batch", "none")


class UNet(nn.Module):
    """MONAI ``UNet`` (2D) with channels ``(w, 2w, 4w, ...)`` over ``depth`` levels.

    MONAI's UNet needs H and W divisible by ``2 ** (depth - 1)``; this wrapper pads (reflect,
    or replicate for tiny inputs) up to the next multiple and crops the output back, so whole
    slices of any size can be evaluated. ReLU activations are not in-place and the norm is
    parameter-free instance norm, so the net runs under Opacus' per-sample hooks.

    Parameters: the default ``width=16, depth=3, num_res_units=1`` has 46,667 (37,425 with
    ``num_res_units=0``); ``width=32, depth=4`` has 818,443.

    Args:
        in_channels: image channels.
        width: channels at the top level; doubled at every level below.
        depth: number of levels (>= 2).
        num_res_units: residual units per MONAI block (0 = plain convs).
        norm: MONAI norm name ("instance", "batch", or "none"); "batch" is not Opacus-safe.
        residual: add the input image to the output.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 16,
        depth: int = 3,
        num_res_units: int = 1,
        norm: str = "instance",
        residual: bool = True,
    ) -> None:
        super().__init__()
        norm = look_up_option(norm, NORMS, what="UNet norm")
        if depth < 2:
            raise ValueError(f"UNet depth must be >= 2 levels, got {depth}")
        self.unet = MonaiUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=in_channels,
            channels=[width * 2**i for i in range(depth)],
            strides=[2] * (depth - 1),
            num_res_units=num_res_units,
            act=("relu", {"inplace": False}),
            norm=None if norm == "none" else norm,  # type: ignore[arg-type]
        )
        self.multiple = 2 ** (depth - 1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        padded = x
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            padded = F.pad(x, (0, pw, 0, ph), mode=mode)
        out = self.unet(padded)[..., :h, :w]
        return x + out if self.residual else out
