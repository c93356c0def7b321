"""Enhancement networks: same-size image-to-image CNNs for denoising and super-resolution.

Example:
    >>> import torch
    >>> net = build_net("dncnn")
    >>> net(torch.rand(2, 1, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
"""

from medidd.nets.dncnn import DnCNN
from medidd.nets.edsr import EDSR
from medidd.nets.redcnn import RedCNN
from medidd.nets.registry import NETS, NetConfig, build_net, count_parameters
from medidd.nets.srcnn import SRCNN
from medidd.nets.unet import UNet

__all__ = [
    "EDSR",
    "NETS",
    "SRCNN",
    "DnCNN",
    "NetConfig",
    "RedCNN",
    "UNet",
    "build_net",
    "count_parameters",
]
