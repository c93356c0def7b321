"""Small helpers shared by the baseline methods: seeds, budget checks, initialisation, progress.

Every random draw of a baseline comes from a ``torch.Generator`` seeded from ``ctx.seed`` (and a
fixed tag per purpose), so a method is deterministic in its seed and never touches the global RNG.

Example:
    >>> g = generator(0, "init")
    >>> bool(torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=generator(0, "init"))))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medidd.distill.base import DistillContext
from medidd.preprocess.slices import SliceSet
from medidd.seeds import derive


def generator(seed: int, *tags: object) -> torch.Generator:
    """A CPU generator seeded with :func:`medidd.seeds.derive`."""
    return torch.Generator().manual_seed(derive(seed, *tags))


def check_budget(real: SliceSet, ipc: int, method: str) -> None:
    """Raise a ``ValueError`` when a method that picks or starts from real slices is asked for
    more images per patient than the patient has slices."""
    if ipc < 1:
        raise ValueError(f"method '{method}': ipc must be >= 1, got {ipc}")
    if ipc > len(real):
        raise ValueError(
            f"method '{method}': ipc={ipc} is larger than this patient's {len(real)} slices; "
            f"lower ipc to at most {len(real)} or exclude patients with fewer slices "
            f"(distill.min_slices)"
        )


def real_images(real: SliceSet, ctx: DistillContext) -> torch.Tensor:
    """The patient's slices as a float32 tensor on ``ctx.device`` (plain tensor, no metadata)."""
    return torch.as_tensor(real.images).as_subclass(torch.Tensor).float().to(ctx.device)


def pick_real(real: SliceSet, ipc: int, seed: int) -> torch.Tensor:
    """Indices of ``ipc`` distinct real slices drawn uniformly (seeded), in slice order."""
    perm = torch.randperm(len(real), generator=generator(seed, "pick-real"))
    return perm[:ipc].sort().values


def noise_init(real: torch.Tensor, ipc: int, seed: int) -> torch.Tensor:
    """``ipc`` images of i.i.d. Gaussian noise with the patient's mean and standard deviation
    of intensity, clipped to [0, 1] (two numbers of the patient; nothing spatial)."""
    g = generator(seed, "noise-init")
    mean, std = float(real.mean()), float(real.std())
    shape = (ipc, *real.shape[1:])
    noise = torch.randn(shape, generator=g) * std + mean
    return noise.clamp(0.0, 1.0).to(real.device)


def report(ctx: DistillContext, step: int, total: int, loss: float) -> None:
    """Forward progress to ``ctx.progress`` when one is set."""
    if ctx.progress is not None:
        ctx.progress(step, total, loss)


class RandomConvNet(torch.nn.Module):
    """A randomly initialised conv feature extractor (conv 3x3 -> instance norm -> ReLU, with
    2x average pooling after each block when ``pool``), as in distribution matching (Zhao &
    Bilen 2023). Weights are drawn from ``seed`` only; no global RNG.

    Example:
        >>> RandomConvNet(8, 3, pool=True, seed=0)(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 8, 2, 2])
    """

    def __init__(self, width: int, depth: int, *, pool: bool, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pool = pool
        weights, cin = [], 1
        for _ in range(depth):
            std = (2.0 / (cin * 9)) ** 0.5
            weights.append(torch.randn(width, cin, 3, 3, generator=g) * std)
            cin = width
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(w, requires_grad=False) for w in weights]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for w in self.weights:
            h = torch.nn.functional.conv2d(h, w, padding=1)
            h = torch.relu(torch.nn.functional.instance_norm(h))
            if self.pool:
                h = torch.nn.functional.avg_pool2d(h, 2)
        return h


def probe_loss(loss_at: Callable[[int], torch.Tensor], seed: int, n: int = 4) -> float:
    """Mean of ``loss_at(probe_seed)`` over ``n`` fixed probe seeds derived from ``seed``: the
    same nets and patches at every call, so values before and after optimisation compare."""
    with torch.no_grad():
        vals = [float(loss_at(derive(seed, "probe", j))) for j in range(n)]
    return sum(vals) / n
