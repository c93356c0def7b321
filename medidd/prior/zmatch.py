"""Axial positions of the prior and z-matched slice look-up.

Example:
    >>> prior_positions(2).tolist()
    [0.25, 0.75]
"""

from __future__ import annotations

import torch

from medidd.preprocess.slices import SliceSet


def prior_positions(k: int) -> torch.Tensor:
    """``k`` evenly spaced normalised axial positions: the centres of ``k`` equal bins of [0, 1]."""
    if k < 1:
        raise ValueError(f"the prior needs at least one position, got k={k}")
    return (torch.arange(k, dtype=torch.float32) + 0.5) / k


def slices_at(slices: SliceSet, z: torch.Tensor) -> torch.Tensor:
    """The slices of ``slices`` nearest to each position in ``z``: (len(z), 1, H, W)."""
    idx = torch.cdist(z.view(-1, 1).float(), slices.z.view(-1, 1).float()).argmin(dim=1)
    return slices.images[idx]
