"""The interface every distillation method implements, and the registry that names them.

A method condenses ONE patient's real slices into ``ipc`` HQ images (and their LQ partners).
Only that patient's data touches its output (patient-aware distillation); the shared prior and
the degradation come in through :class:`DistillContext`.

Example:
    >>> sorted(available_methods())[:3]  # doctest: +SKIP
    ['dc_noise', 'dc_real', 'dm']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from medidd.degrade.draw import draw_lq
from medidd.lookup import look_up_option
from medidd.preprocess.slices import SliceSet
from medidd.prior.base import Prior
from medidd.seeds import derive

#: ``(hq, seed) -> lq``: a seeded, differentiable degradation of (N, 1, H, W) images.
Degrade = Callable[[torch.Tensor, int], torch.Tensor]
#: ``(step, total, loss)`` progress callback; the CLI turns it into a progress bar.
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class DistillContext:
    """What a method needs besides the patient's slices."""

    ipc: int
    degrade: Degrade
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prior: Prior | None = None
    progress: Progress | None = None
    #: A cheaper stand-in for ``degrade`` used only inside matching loops (for CT low dose, the
    #: calibrated image-domain noise); the shipped LQ always comes from ``degrade``.
    match_degrade: Degrade | None = None

    @property
    def matching_degrade(self) -> Degrade:
        """The degradation to use inside a matching loop."""
        return self.match_degrade if self.match_degrade is not None else self.degrade


@dataclass(frozen=True)
class Distilled:
    """A method's output for one patient: ``hq`` (K, 1, H, W) in [0, 1], ``lq`` its degraded
    partner drawn with ``lq_seed``, ``info`` scalar diagnostics (final loss, steps, seconds)."""

    hq: torch.Tensor
    lq: torch.Tensor
    lq_seed: int
    info: dict[str, float] = field(default_factory=dict)


class Method(Protocol):
    """A distillation method: ``distill(real, ctx) -> Distilled`` for one patient."""

    name: str
    #: True when the output contains real slices verbatim (random, herding, k-center, full).
    ships_real_slices: bool
    #: True when the method starts from ``ctx.prior`` (it must not be None then).
    needs_prior: bool

    def distill(self, real: SliceSet, ctx: DistillContext) -> Distilled: ...


MethodFactory = Callable[..., Method]
_REGISTRY: dict[str, MethodFactory] = {}


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Class decorator adding a method factory under ``name``."""

    def deco(factory: MethodFactory) -> MethodFactory:
        prev = _REGISTRY.get(name)
        if prev is not None and getattr(prev, "__qualname__", None) != getattr(
            factory, "__qualname__", None
        ):
            raise ValueError(f"distillation method '{name}' registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_methods() -> list[str]:
    """Names of every registered method (importing :mod:`medidd.distill` registers them all)."""
    return sorted(_REGISTRY)


def method_factory(name: str) -> MethodFactory:
    """The factory registered under ``name``; unknown names get a "did you mean" error."""
    return _REGISTRY[look_up_option(name, available_methods(), what="distillation method")]


def finish(
    hq: torch.Tensor, ctx: DistillContext, info: dict[str, float] | None = None
) -> Distilled:
    """Clamp ``hq`` to [0, 1], detach it, and draw its LQ partners with
    :func:`~medidd.degrade.draw_lq` under ``lq_seed = derive(ctx.seed, "lq")`` (recorded, so
    image ``i``'s LQ is reproduced by ``degrade(hq[i], derive(lq_seed, i))``)."""
    hq = hq.detach().clamp(0.0, 1.0).float().cpu()
    lq_seed = derive(int(ctx.seed), "lq")
    lq = draw_lq(hq.to(ctx.device), ctx.degrade, lq_seed).float().cpu()
    return Distilled(hq=hq.contiguous(), lq=lq.contiguous(), lq_seed=lq_seed, info=dict(info or {}))
