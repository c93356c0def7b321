"""Seeded noise draws that never touch the global RNG.

A degradation takes ``seed: int | torch.Generator``. An ``int`` seeds a fresh CPU generator and
the noise is drawn on the CPU then moved, so the same seed gives the same noise on CPU and CUDA.
A ``torch.Generator`` is used as given (draws happen on its device, and advance it).
:class:`PerImageSeeds` gives every image of a batch its own seed: image ``i`` gets exactly the
noise that ``seed=seeds[i]`` gives it on its own, so a batch can be degraded in one call (one
Radon transform for all images, several times faster than a loop) without its LQ depending on
how the images were batched.

Example:
    >>> import torch
    >>> like = torch.zeros(2, 3)
    >>> bool(torch.equal(standard_normal((2, 3), like, 7), standard_normal((2, 3), like, 7)))
    True
"""

from __future__ import annotations

import torch


class PerImageSeeds(tuple[int, ...]):
    """One integer seed per image of a batch (see the module docstring).

    Example:
        >>> import torch
        >>> like = torch.zeros(2, 1, 4, 4)
        >>> both = standard_normal((2, 1, 4, 4), like, PerImageSeeds((3, 4)))
        >>> bool(torch.equal(both[1:], standard_normal((1, 1, 4, 4), like, 4)))
        True
    """

    __slots__ = ()


Seed = int | torch.Generator | PerImageSeeds


def make_generator(seed: int | torch.Generator) -> torch.Generator:
    """Return ``seed`` itself if it is a generator, else a CPU generator seeded with it."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def standard_normal(
    shape: tuple[int, ...], like: torch.Tensor, seed: Seed, batch_dim: int = 0
) -> torch.Tensor:
    """N(0, 1) samples of ``shape`` with ``like``'s dtype and device, drawn from ``seed``.

    With :class:`PerImageSeeds`, ``shape[batch_dim]`` is the image axis: slice ``i`` along it is
    drawn from ``seeds[i]`` alone (``batch_dim`` is ignored for other seeds).
    """
    draw_dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    if isinstance(seed, PerImageSeeds):
        if shape[batch_dim] != len(seed):
            raise ValueError(
                f"{len(seed)} per-image seeds for a batch of {shape[batch_dim]} images "
                f"(shape {shape}, image axis {batch_dim}); give one seed per image"
            )
        one = (*shape[:batch_dim], 1, *shape[batch_dim + 1 :])
        parts = [torch.randn(one, generator=make_generator(s), dtype=draw_dtype) for s in seed]
        return torch.cat(parts, dim=batch_dim).to(device=like.device, dtype=like.dtype)
    generator = make_generator(seed)
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=draw_dtype)
    return noise.to(device=like.device, dtype=like.dtype)


def check_images(images: torch.Tensor, what: str) -> None:
    """Raise a ``ValueError`` unless ``images`` is a floating (N, 1, H, W) tensor."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{what}: expected images (N, 1, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{what}: expected a floating-point tensor, got {images.dtype}")
