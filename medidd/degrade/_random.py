"""Seeded noise draws that never touch the global RNG.

A degradation takes ``seed: int | torch.Generator``. An ``int`` seeds a fresh CPU generator and
the noise is drawn on the CPU then moved, so the same seed gives the same noise on CPU and CUDA.
A ``torch.Generator`` is used as given (draws happen on its device, and advance it).

Example:
    >>> import torch
    >>> like = torch.zeros(2, 3)
    >>> bool(torch.equal(standard_normal((2, 3), like, 7), standard_normal((2, 3), like, 7)))
    True
"""

from __future__ import annotations

import torch

Seed = int | torch.Generator


def make_generator(seed: Seed) -> torch.Generator:
    """Return ``seed`` itself if it is a generator, else a CPU generator seeded with it."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def standard_normal(shape: tuple[int, ...], like: torch.Tensor, seed: Seed) -> torch.Tensor:
    """N(0, 1) samples of ``shape`` with ``like``'s dtype and device, drawn from ``seed``."""
    generator = make_generator(seed)
    draw_dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=draw_dtype)
    return noise.to(device=like.device, dtype=like.dtype)


def check_images(images: torch.Tensor, what: str) -> None:
    """Raise a ``ValueError`` unless ``images`` is a floating (N, 1, H, W) tensor."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{what}: expected images (N, 1, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{what}: expected a floating-point tensor, got {images.dtype}")
