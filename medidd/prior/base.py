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
