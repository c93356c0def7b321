"""The training unit: a stack of normalised 2D slices from one patient.

Example:
    >>> import torch
    >>> s = SliceSet(torch.zeros(3, 1, 8, 8), torch.tensor([0.0, 0.5, 1.0]), "p-1", "CT",
    ...              window=(-1000.0, 1000.0))
    >>> len(s), s.size
    (3, 8)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SliceSet:
    """``images`` float32 (N, 1, H, W) in [0, 1] after the window (CT, HU) or percentile
    clipping (MR); ``z`` float32 (N,) the normalised axial position of each slice in its
    volume (0 = first slice, 1 = last); ``window`` the (low, high) native intensities that map
    to 0 and 1 (HU for CT), kept so degradations that need physical units (CT low dose) can
    undo the normalisation."""

    images: torch.Tensor
    z: torch.Tensor
    patient_key: str
    modality: str
    window: tuple[float, float]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise ValueError(
                f"SliceSet images must be (N, 1, H, W), got {tuple(self.images.shape)}"
            )
        if self.z.shape != (self.images.shape[0],):
            raise ValueError("SliceSet z must have one position per slice")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])
