"""Free-pixel gradient matching: ``dc_real`` and ``dc_noise`` (dataset condensation adapted to
enhancement, seed 002) and ``pixel_gm`` (the ablation "prior + free-pixel matching").

The synthetic HQ images are free parameters (Adam, ``matching.lr_syn``, projected to [0, 1]
after every step). Each of ``matching.iterations`` outer iterations draws a fresh
:class:`~medidd.distill.matching.MatchingNet` and a fresh pool of ``real_batch`` real slices
degraded whole with a fresh seed; it then runs ``outer_loop`` matching steps, each comparing the
net's gradients on ``real_batch`` random real patches (LQ -> HQ) with those on ``syn_patches``
patches of the synthetic pairs, whose LQ is ``ctx.degrade(syn, seed)`` (differentiable, fresh
seed per step); the distance is :func:`~medidd.distill.matching.gm_distance`. After each step
the net trains ``inner_steps`` SGD steps on the synthetic pairs, as dataset condensation does.
Real and synthetic LQ both come from degrading whole slices, then cropping, so the matched
gradients see the same operator the downstream trainer sees.

Initialisation: ``dc_real`` from ``ipc`` random real slices (the seed-002 finding:
initialisation matters; output stays close to those slices), ``dc_noise`` from Gaussian noise
with the patient's mean and standard deviation of intensity (it cannot be a copy of a slice),
``pixel_gm`` from the shared prior (``ctx.prior``), taken at ``ipc`` evenly spaced positions
``z = (k + 0.5) / ipc`` by linear interpolation along the prior's ``z``. ``pixel_gm`` uses
``matching.objective`` (``gm``, ``lfd`` or ``gm+lfd``, same as ``spg_gm``) so that it isolates
free pixels vs the SPG generator; the DC baselines use pure gradient matching.

``info`` holds ``probe_start`` / ``probe_end``: the matching loss of the initial and final images
measured on the same fixed probe (4 seeded nets, fixed real patches and LQ seeds), so a drop is
real progress, not noise from fresh nets.

``dc_noise`` and ``pixel_gm`` work for any ``ipc``; ``dc_real`` needs ``ipc <= slices``.

Example:
    >>> sorted(m for m in ("dc_real", "dc_noise", "pixel_gm"))
    ['dc_noise', 'dc_real', 'pixel_gm']
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from medidd.distill.base import DistillContext, Distilled, Prior, finish, register_method
from medidd.distill.baselines._common import (
    check_budget,
    generator,
    noise_init,
    pick_real,
    real_images,
    report,
)
from medidd.distill.config import DistillConfig, MatchingConfig
from medidd.distill.matching import (
    LocalFeatureBank,
    fresh_matching_net,
    gm_distance,
    lfd_loss,
    net_gradients,
    pair_loss,
    random_patches,
)
from medidd.preprocess.slices import SliceSet
from medidd.seeds import derive

logger = logging.getLogger(__name__)

PROBE_NETS = 4


def prior_at(prior: Prior, ipc: int, size: tuple[int, int]) -> torch.Tensor:
    """``ipc`` prior images at ``z = (k + 0.5) / ipc``, linearly interpolated along the prior's
    sorted ``z`` (clamped at the ends); the prior must have the slices' in-plane ``size``.

    Example:
        >>> p = Prior(torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]),
        ...           torch.tensor([0.0, 1.0]), "mean", False)
        >>> prior_at(p, 1, (4, 4)).mean().item()
        0.5
    """
    images = prior.images.float()
    if tuple(images.shape[-2:]) != tuple(size) or images.ndim != 4:
        raise ValueError(
            f"prior images have shape {tuple(images.shape)} but the patient's slices are "
            f"{tuple(size)}; build the prior with the same preprocess.size"
        )
    z, order = prior.z.float().cpu().sort()
    images = images[order]
    out = []
    for k in range(ipc):
        target = (k + 0.5) / ipc
        if target <= float(z[0]):
            out.append(images[0])
        elif target >= float(z[-1]):
            out.append(images[-1])
        else:  # z[lo] < target <= z[hi]
            hi = int(torch.searchsorted(z, torch.tensor(target)))
            lo = hi - 1
            t = (target - float(z[lo])) / (float(z[hi]) - float(z[lo]))
            out.append(images[lo] * (1 - t) + images[hi] * t)
    return torch.stack(out).clamp(0.0, 1.0)


class _Matcher:
    """The patient's matching problem: real pools, synthetic pairs, the loss."""

    def __init__(
        self, real: torch.Tensor, ctx: DistillContext, m: MatchingConfig, objective: str
    ) -> None:
        self.real, self.ctx, self.m, self.objective = real, ctx, m, objective
        self.bank: LocalFeatureBank | None = None
        self._probe_pools: list[tuple[int, tuple[torch.Tensor, torch.Tensor]]] = []
        if "lfd" in objective:
            seed = derive(ctx.seed, "lfd-bank")
            bank = LocalFeatureBank(m.lfd_features, m.lfd_kernel, m.lfd_frequencies, seed)
            self.bank = bank.to(ctx.device)

    def real_pool(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``real_batch`` real slices (seeded choice) and their LQ drawn with ``seed``."""
        g = generator(seed, "pool")
        n = min(self.m.real_batch, len(self.real))
        hq = self.real[torch.randperm(len(self.real), generator=g)[:n].to(self.real.device)]
        with torch.no_grad():
            lq = self.ctx.matching_degrade(hq, derive(seed, "pool-lq"))
        return lq, hq

    def loss(
        self,
        net: torch.nn.Module,
        pool: tuple[torch.Tensor, torch.Tensor],
        syn: torch.Tensor,
        seed: int,
        *,
        create_graph: bool,
    ) -> torch.Tensor:
        """Matching loss between real patches of ``pool`` and synthetic patches of ``syn``."""
        m, g = self.m, generator(seed, "patches")
        real_lq, real_hq = random_patches(list(pool), m.real_batch, m.patch_size, g)
        use_gm = "gm" in self.objective.split("+")
        syn_lq_full = (
            self.ctx.matching_degrade(syn, derive(seed, "syn-lq")) if use_gm else syn
        )
        syn_lq, syn_hq = random_patches([syn_lq_full, syn], m.syn_patches, m.patch_size, g)
        total = syn.new_zeros(())
        if use_gm:
            g_real = net_gradients(net, real_lq, real_hq, create_graph=False)
            g_syn = net_gradients(net, syn_lq, syn_hq, create_graph=create_graph)
            total = total + gm_distance(g_real, g_syn)
        if self.bank is not None:
            weight = m.lfd_weight if use_gm else 1.0
            total = total + weight * lfd_loss(self.bank, real_hq, syn_hq, generator=g)
        return total

    def probe(self, syn: torch.Tensor) -> float:
        """The loss of ``syn`` on a fixed probe (same nets, patches and seeds every call)."""
        if not self._probe_pools:
            seeds = [derive(self.ctx.seed, "probe", j) for j in range(PROBE_NETS)]
            self._probe_pools = [(s, self.real_pool(s)) for s in seeds]
        total = 0.0
        for seed, pool in self._probe_pools:
            net = fresh_matching_net(
                self.m.net_width, self.m.net_depth, seed % (2**31), self.ctx.device
            )
            total += float(self.loss(net, pool, syn.detach(), seed, create_graph=False))
        return total / PROBE_NETS


def match_pixels(
    init: torch.Tensor, real: torch.Tensor, ctx: DistillContext, m: MatchingConfig, objective: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """Optimise free pixels from ``init`` (K, 1, H, W) so their pairs match the real pairs.

    Returns the final images and diagnostics (probe losses, steps, seconds).
    """
    start = time.perf_counter()
    matcher = _Matcher(real, ctx, m, objective)
    syn = init.detach().clone().to(ctx.device).requires_grad_(True)
    opt = torch.optim.Adam([syn], lr=m.lr_syn)
    probe_start = matcher.probe(syn)
    total_steps = m.iterations * m.outer_loop
    step, last = 0, float("nan")
    for it in range(m.iterations):
        net_seed = derive(ctx.seed, "net", it)
        net = fresh_matching_net(m.net_width, m.net_depth, net_seed, ctx.device)
        net_opt = torch.optim.SGD(net.parameters(), lr=m.lr_net, momentum=0.5)
        pool = matcher.real_pool(derive(ctx.seed, "pool", it))
        for ol in range(m.outer_loop):
            seed = derive(ctx.seed, "step", it, ol)
            loss = matcher.loss(net, pool, syn, seed, create_graph=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                syn.clamp_(0.0, 1.0)
            last, step = float(loss.detach()), step + 1
            report(ctx, step, total_steps, last)
            _train_inner(net, net_opt, syn.detach(), ctx, m, seed)
    probe_end = matcher.probe(syn)
    info = {
        "probe_start": probe_start,
        "probe_end": probe_end,
        "final_loss": last,
        "steps": float(step),
        "seconds": time.perf_counter() - start,
    }
    logger.debug("pixel matching: probe loss %.4f -> %.4f", probe_start, probe_end)
    return syn.detach(), info


def _train_inner(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    syn: torch.Tensor,
    ctx: DistillContext,
    m: MatchingConfig,
    seed: int,
) -> None:
    """``inner_steps`` SGD steps of ``net`` on synthetic pairs (one fresh LQ draw, new crops
    every step)."""
    if m.inner_steps == 0:
        return
    g = generator(seed, "inner")
    with torch.no_grad():
        lq_full = ctx.matching_degrade(syn, derive(seed, "inner-lq"))
    for _ in range(m.inner_steps):
        lq, hq = random_patches([lq_full, syn], m.syn_patches, m.patch_size, g)
        opt.zero_grad(set_to_none=True)
        pair_loss(net, lq, hq).backward()
        opt.step()


class _PixelGM:
    name = "pixel"
    ships_real_slices = False
    needs_prior = False
    objective = "gm"

    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg

    def init(self, real: SliceSet, images: torch.Tensor, ctx: DistillContext) -> torch.Tensor:
        raise NotImplementedError

    def distill(self, real: SliceSet, ctx: DistillContext) -> Distilled:
        """Free-pixel gradient matching of the patient's pairs (see the module docstring)."""
        images = real_images(real, ctx)
        init = self.init(real, images, ctx)
        out, info = match_pixels(init, images, ctx, self.cfg.matching, self.objective)
        info["init_change"] = float(F.l1_loss(out, init.to(out.device)))
        return finish(out, ctx, info)


@register_method("dc_real")
class DCReal(_PixelGM):
    """DC pixel gradient matching from ``ipc`` random real slices (seed 002's best init)."""

    name = "dc_real"

    def init(self, real: SliceSet, images: torch.Tensor, ctx: DistillContext) -> torch.Tensor:
        check_budget(real, ctx.ipc, self.name)
        return images[pick_real(real, ctx.ipc, ctx.seed).to(images.device)]


@register_method("dc_noise")
class DCNoise(_PixelGM):
    """DC pixel gradient matching from Gaussian noise (patient mean/std intensity)."""

    name = "dc_noise"

    def init(self, real: SliceSet, images: torch.Tensor, ctx: DistillContext) -> torch.Tensor:
        return noise_init(images, ctx.ipc, ctx.seed)


@register_method("pixel_gm")
class PixelGM(_PixelGM):
    """Free-pixel matching from the shared prior with ``matching.objective``."""

    name = "pixel_gm"
    needs_prior = True

    def __init__(self, cfg: DistillConfig) -> None:
        super().__init__(cfg)
        self.objective = cfg.matching.objective

    def init(self, real: SliceSet, images: torch.Tensor, ctx: DistillContext) -> torch.Tensor:
        if ctx.prior is None:
            raise ValueError(
                "method 'pixel_gm' needs the shared prior (ctx.prior is None); "
                "build one with medidd.prior or pick another method"
            )
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return prior_at(ctx.prior, ctx.ipc, size).to(images.device)
