"""Seeded batch sampling for the trainer: image indices in reshuffled epochs + random crops.

Example:
    >>> import torch
    >>> sampler = PatchSampler(n=3, size=(10, 12), batch_size=4, patch_size=5,
    ...                        generator=torch.Generator().manual_seed(0))
    >>> idx, ys, xs = sampler.next()
    >>> idx.shape, bool((ys <= 5).all()), bool((xs <= 7).all())
    (torch.Size([4]), True, True)
    >>> crop(torch.zeros(3, 1, 10, 12), idx, ys, xs, 5).shape
    torch.Size([4, 1, 5, 5])
"""

from __future__ import annotations

import torch


class PatchSampler:
    """Draws ``batch_size`` (image, top, left) triples per call from ``generator`` only.

    Images come from a stream of random permutations of ``range(n)`` (every image once per
    epoch, the last batch of an epoch continuing into the next), crops uniformly at random.
    ``patch_size=None`` means whole images (``ys = xs = 0``).
    """

    def __init__(
        self,
        n: int,
        size: tuple[int, int],
        batch_size: int,
        patch_size: int | None,
        generator: torch.Generator,
    ) -> None:
        h, w = size
        if patch_size is not None and (patch_size > h or patch_size > w):
            raise ValueError(
                f"patch_size {patch_size} is larger than the training images ({h} x {w}); "
                "use a smaller patch_size, or patch_size: null for whole images"
            )
        self.n, self.h, self.w = n, h, w
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.generator = generator
        self._queue = torch.empty(0, dtype=torch.long)

    def _indices(self) -> torch.Tensor:
        while self._queue.numel() < self.batch_size:
            perm = torch.randperm(self.n, generator=self.generator)
            self._queue = torch.cat([self._queue, perm])
        idx, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        return idx

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(indices, tops, lefts)``, each a (batch_size,) long tensor."""
        idx = self._indices()
        if self.patch_size is None:
            zeros = torch.zeros(self.batch_size, dtype=torch.long)
            return idx, zeros, zeros.clone()
        shape, gen = (self.batch_size,), self.generator
        ys = torch.randint(0, self.h - self.patch_size + 1, shape, generator=gen)
        xs = torch.randint(0, self.w - self.patch_size + 1, shape, generator=gen)
        return idx, ys, xs


def crop(
    images: torch.Tensor,
    idx: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    patch_size: int | None,
) -> torch.Tensor:
    """Stack ``images[i, :, y:y+p, x:x+p]`` for each triple (whole images if ``patch_size`` is
    None); the result lives on ``images``' device."""
    if patch_size is None:
        return images[idx.to(images.device)]
    p = patch_size
    patches = [
        images[i, :, y : y + p, x : x + p]
        for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist(), strict=True)
    ]
    return torch.stack(patches)
