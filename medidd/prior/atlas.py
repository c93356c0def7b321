"""A procedurally generated anatomical atlas: a prior that holds nothing of any local patient.

No template can be downloaded at run time, so the atlas is drawn from simple geometry with
textbook intensities: for CT a torso whose content follows the axial position ``z`` (0 = pelvis,
1 = upper chest): skin and subcutaneous fat, muscle, spine with cortical bone and canal; lungs,
heart, aorta and ribs above ``z = 0.45``; liver, kidneys, bowel gas and fat below. For MR an
axial T1-weighted head: scalp, skull, CSF, grey and white matter, ventricles. Shapes are rendered
at twice the size and area-downsampled (partial-volume edges). With DP, an atlas prior keeps the
guarantee covering the whole output.

Example:
    >>> import torch
    >>> p = atlas_prior(2, size=64, modality="CT", window=(-1000.0, 1000.0))
    >>> p.images.shape, p.local_data
    (torch.Size([2, 1, 64, 64]), False)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medidd.lookup import look_up_option
from medidd.prior.base import Prior
from medidd.prior.zmatch import prior_positions


def _ellipse(
    yy: torch.Tensor,
    xx: torch.Tensor,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float = 0.0,
) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return (u * u + v * v) <= 1.0


def _ct_slice(z: float, n: int) -> torch.Tensor:
    """One CT slice in HU on an ``n`` x ``n`` grid spanning [-1, 1]^2 (y down = posterior)."""
    ax = torch.linspace(-1, 1, n)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    img = torch.full((n, n), -1000.0)
    chest = z >= 0.45
    rx = 0.82 if chest else 0.78 + 0.06 * math.sin(math.pi * z)
    ry = 0.58 if chest else 0.55
    img[_ellipse(yy, xx, 0.05, 0, ry, rx)] = -100.0  # skin + subcutaneous fat
    inner = _ellipse(yy, xx, 0.05, 0, ry - 0.06, rx - 0.06)
    img[inner] = 45.0  # muscle wall
    cavity = _ellipse(yy, xx, 0.02, 0, ry - 0.14, rx - 0.15)
    if chest:
        img[cavity] = -60.0  # mediastinal fat
        for side in (-1, 1):
            img[_ellipse(yy, xx, 0.0, side * 0.36, ry - 0.2, 0.3, side * 0.15)] = -850.0
            for k in range(6):  # ribs along the wall
                a = math.pi * (0.15 + 0.14 * k)
                img[
                    _ellipse(
                        yy,
                        xx,
                        0.05 - (ry - 0.1) * math.cos(a) * 0.9,
                        side * (rx - 0.1) * math.sin(a),
                        0.025,
                        0.035,
                    )
                ] = 600.0
        img[_ellipse(yy, xx, -0.05, 0.08, 0.22, 0.2, 0.4)] = 40.0  # heart
        img[_ellipse(yy, xx, 0.12, -0.12, 0.07, 0.07)] = 160.0  # contrast in the aorta
    else:
        img[cavity] = -90.0  # intra-abdominal fat
        img[_ellipse(yy, xx, -0.05, -0.35, 0.3, 0.28, 0.2)] = 60.0  # liver
        for side in (-1, 1):
            img[_ellipse(yy, xx, 0.28, side * 0.3, 0.1, 0.07, side * 0.5)] = 30.0  # kidneys
        img[_ellipse(yy, xx, -0.15, 0.25, 0.22, 0.25)] = 20.0  # bowel
        for cy, cx in ((-0.2, 0.2), (-0.05, 0.35), (-0.3, 0.05)):
            img[_ellipse(yy, xx, cy, cx, 0.05, 0.06)] = -1000.0  # gas
    img[_ellipse(yy, xx, 0.38, 0, 0.11, 0.12)] = 700.0  # vertebral cortex
    img[_ellipse(yy, xx, 0.38, 0, 0.085, 0.095)] = 250.0  # cancellous bone
    img[_ellipse(yy, xx, 0.53, 0, 0.035, 0.04)] = 20.0  # spinal canal
    img[_ellipse(yy, xx, 0.56, 0, 0.09, 0.03)] = 500.0  # spinous process
    return img


def _mr_slice(z: float, n: int) -> torch.Tensor:
    """One axial T1-like head slice in [0, 1] (fat and white matter bright, CSF dark)."""
    ax = torch.linspace(-1, 1, n)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    img = torch.zeros(n, n)
    scale = 0.75 + 0.2 * math.sin(math.pi * min(max(z, 0.0), 1.0))
    ry, rx = 0.85 * scale, 0.7 * scale
    img[_ellipse(yy, xx, 0, 0, ry, rx)] = 0.85  # scalp fat
    img[_ellipse(yy, xx, 0, 0, ry - 0.05, rx - 0.05)] = 0.05  # skull
    img[_ellipse(yy, xx, 0, 0, ry - 0.1, rx - 0.1)] = 0.2  # CSF
    img[_ellipse(yy, xx, 0, 0, ry - 0.13, rx - 0.13)] = 0.45  # cortex (grey matter)
    img[_ellipse(yy, xx, 0, 0, ry - 0.25, rx - 0.25)] = 0.65  # white matter
    if 0.3 <= z <= 0.8:
        for side in (-1, 1):
            img[_ellipse(yy, xx, -0.05, side * 0.12, 0.25 * scale, 0.06, side * 0.2)] = 0.15
    return img


def atlas_slice(z: float, *, size: int, modality: str, window: tuple[float, float]
                ) -> torch.Tensor:
    """One atlas slice (1, ``size``, ``size``) at axial position ``z``, normalised like the
    site's data (CT through ``window`` in HU; MR already in [0, 1]).

    Example:
        >>> atlas_slice(0.75, size=16, modality="CT", window=(-1000.0, 1000.0)).shape
        torch.Size([1, 16, 16])
    """
    modality = look_up_option(modality, ("CT", "MR"), what="modality")
    hi_res = 2 * size
    if modality == "CT":
        lo, hi = window
        img = ((_ct_slice(z, hi_res) - lo) / (hi - lo)).clamp(0, 1)
    else:
        img = _mr_slice(z, hi_res)
    return F.interpolate(img[None, None], size=(size, size), mode="area")[0]


def atlas_prior(k: int, *, size: int, modality: str, window: tuple[float, float]) -> Prior:
    """``k`` atlas slices at :func:`prior_positions`, normalised like the site's data.

    CT slices are mapped to [0, 1] through ``window`` (HU); MR slices are already in [0, 1].
    """
    z = prior_positions(k)
    slices = [atlas_slice(zk, size=size, modality=modality, window=window) for zk in z.tolist()]
    return Prior(images=torch.stack(slices), z=z, kind="atlas", local_data=False)
