"""``dm``: distribution matching (Zhao & Bilen, WACV 2023) in pixel space, per patient.

Every step draws a fresh randomly initialised :class:`RandomConvNet` (conv-instance norm-ReLU-
pool blocks) and minimises the squared distance between the mean embeddings of random real HQ
patches and random synthetic HQ patches (maximum mean discrepancy with a linear kernel). With
``match_lq`` the LQ sides (real slices and synthetic images degraded whole with fresh seeds,
then cropped) are matched as well, which makes the objective aware of the task.

Initialisation: Gaussian noise with the patient's mean/std intensity by default (``init:
noise``), so nothing spatial of the patient is copied in; ``init: real`` starts from ``ipc``
random real slices as the original DM does (and then needs ``ipc <= slices``). Noise init works
for any ``ipc``.

Example:
    >>> DMOptions().init
    'noise'
"""

from __future__ import annotations

import time

import torch

from medidd.distill.base import DistillContext, Distilled, finish, register_method
from medidd.distill.baselines._common import (
    RandomConvNet,
    check_budget,
    generator,
    noise_init,
    pick_real,
    probe_loss,
    real_images,
    report,
)
from medidd.distill.config import DistillConfig
from medidd.distill.matching import random_patches
from medidd.distill.options import DMOptions
from medidd.preprocess.slices import SliceSet
from medidd.seeds import derive


@register_method("dm")
class DistributionMatching:
    """Pixel-space distribution matching of random-CNN mean embeddings."""

    name = "dm"
    ships_real_slices = False
    needs_prior = False

    def __init__(self, cfg: DistillConfig, options: DMOptions | None = None) -> None:
        self.cfg = cfg
        self.opt = options or cfg.dm

    def _loss(
        self, real: torch.Tensor, syn: torch.Tensor, ctx: DistillContext, seed: int
    ) -> torch.Tensor:
        o, size = self.opt, self.cfg.matching.patch_size
        g = generator(seed, "dm")
        net = RandomConvNet(o.width, o.depth, pool=True, seed=derive(seed, "net"))
        net = net.to(syn.device)
        pick = torch.randint(0, len(real), (o.real_patches,), generator=g).to(real.device)
        real_hq = real[pick]
        stacks_real, stacks_syn = [real_hq], [syn]
        if o.match_lq:
            with torch.no_grad():
                stacks_real.append(ctx.matching_degrade(real_hq, derive(seed, "real-lq")))
            stacks_syn.append(ctx.matching_degrade(syn, derive(seed, "syn-lq")))
        crops_real = random_patches(stacks_real, o.real_patches, size, g)
        crops_syn = random_patches(stacks_syn, o.syn_patches, size, g)
        loss = syn.new_zeros(())
        for r, s in zip(crops_real, crops_syn, strict=True):
            with torch.no_grad():
                mean_real = net(r).flatten(1).mean(0)
            loss = loss + ((net(s).flatten(1).mean(0) - mean_real) ** 2).sum()
        return loss

    def distill(self, real: SliceSet, ctx: DistillContext) -> Distilled:
        """Match random-CNN mean embeddings of the patient's patches (see module docstring)."""
        start = time.perf_counter()
        images = real_images(real, ctx)
        if self.opt.init == "real":
            check_budget(real, ctx.ipc, self.name)
            init = images[pick_real(real, ctx.ipc, ctx.seed).to(images.device)]
        else:
            init = noise_init(images, ctx.ipc, ctx.seed)
        syn = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([syn], lr=self.opt.lr)
        probe_start = probe_loss(lambda s: self._loss(images, syn.detach(), ctx, s), ctx.seed)
        last = float("nan")
        for step in range(self.opt.steps):
            loss = self._loss(images, syn, ctx, derive(ctx.seed, "dm-step", step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                syn.clamp_(0.0, 1.0)
            last = float(loss.detach())
            report(ctx, step + 1, self.opt.steps, last)
        probe_end = probe_loss(lambda s: self._loss(images, syn.detach(), ctx, s), ctx.seed)
        info = {
            "probe_start": probe_start,
            "probe_end": probe_end,
            "final_loss": last,
            "steps": float(self.opt.steps),
            "seconds": time.perf_counter() - start,
        }
        return finish(syn, ctx, info)
