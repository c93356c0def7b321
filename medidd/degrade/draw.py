"""The one LQ drawer: :func:`draw_lq` gives every HQ image its seeded low-quality partner.

Image ``i`` is degraded with seed ``derive(seed, *tags, i)`` (:func:`medidd.seeds.derive`), so
its LQ depends only on (seed, tags, i) — never on how images were batched, on the thread count
or on which caller drew it. Distillation (the shipped LQ), downstream training (re-drawn every
epoch), the held-out test LQ of benchmarks and federated evaluation, FedAvg's local training
and the privacy audit all call this function.

A :class:`~medidd.degrade.Degradation` is applied to a chunk of images in one call with
:class:`~medidd.degrade.PerImageSeeds` (one Radon transform for the chunk: ~4x faster on a CPU
than image by image, and image ``i``'s noise is exactly what ``seed_i`` gives it alone); any
other ``(hq, seed) -> lq`` callable is called image by image. An LQ grid smaller than the HQ
grid (a super-resolution operator that returns the small image) is resampled onto the HQ grid
(bicubic), so pairs always have one shape.

Example:
    >>> import torch
    >>> from medidd.degrade import DegradationSpec, build_degradation
    >>> op = build_degradation(DegradationSpec(kind="gaussian", noise_sigma=0.05))
    >>> hq = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> a = draw_lq(hq, op, 7, "test")
    >>> b = torch.cat([draw_lq(hq[:2], op, 7, "test"), draw_lq(hq[2:], op, 7, "test", start=2)])
    >>> bool(torch.allclose(a, b, atol=0)), a.shape
    (True, torch.Size([5, 1, 16, 16]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from medidd.degrade._random import PerImageSeeds
from medidd.degrade.spec import Degradation
from medidd.seeds import derive

Degrade = Callable[[torch.Tensor, int], torch.Tensor]

#: images degraded per call (bounds the memory of one batched Radon transform)
CHUNK = 32

__all__ = ["CHUNK", "Degrade", "draw_lq", "image_seeds"]


def image_seeds(seed: int, *tags: object, n: int, start: int = 0) -> list[int]:
    """The seeds :func:`draw_lq` gives images ``start .. start + n - 1``.

    Example:
        >>> image_seeds(0, "lq", n=2) == [derive(0, "lq", 0), derive(0, "lq", 1)]
        True
    """
    return [derive(seed, *tags, i) for i in range(start, start + n)]


def draw_lq(
    hq: torch.Tensor,
    degrade: Degrade,
    seed: int,
    *tags: object,
    start: int = 0,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """LQ partners of ``hq`` (N, 1, H, W), image ``i`` drawn with ``derive(seed, *tags,
    start + i)``; same shape, dtype and device as ``hq``; no gradient.

    Args:
        hq: the high-quality images in [0, 1].
        degrade: a :class:`~medidd.degrade.Degradation` (batched) or any ``(hq, seed) -> lq``.
        seed: the caller's seed; ``tags`` name the draw (e.g. ``("train", epoch)``).
        start: index of ``hq[0]`` in a larger set drawn in pieces (same LQ as one call).
        chunk: images per batched call.

    Raises:
        ValueError: the operator returned another batch size or non-finite values.
    """
    if hq.ndim != 4:
        raise ValueError(f"draw_lq: hq must be (N, C, H, W), got {tuple(hq.shape)}")
    n = hq.shape[0]
    if n == 0:
        return hq.clone()
    seeds = image_seeds(seed, *tags, n=n, start=start)
    parts = []
    with torch.no_grad():
        if isinstance(degrade, Degradation):
            for a in range(0, n, max(chunk, 1)):
                part = degrade(hq[a : a + chunk], PerImageSeeds(seeds[a : a + chunk]))
                parts.append(_on_grid(part, hq))
        else:
            parts = [_on_grid(degrade(hq[i : i + 1], s), hq) for i, s in enumerate(seeds)]
    out = torch.cat(parts).to(dtype=hq.dtype)
    if out.shape != hq.shape:
        raise ValueError(
            f"draw_lq: the degradation returned shape {tuple(out.shape)} for HQ of shape "
            f"{tuple(hq.shape)}; it must keep the batch and channel sizes"
        )
    if not torch.isfinite(out).all():
        raise ValueError(f"draw_lq: the degradation produced non-finite values (tags {tags})")
    return out


def _on_grid(lq: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
    if lq.shape[-2:] != hq.shape[-2:]:
        lq = F.interpolate(lq, size=hq.shape[-2:], mode="bicubic", align_corners=False)
    return lq
