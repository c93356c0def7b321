"""``tripled``: TripleD-style complexity selection + CNN distribution alignment (seed 001).

TripleD scores every training image's complexity with a ViT trained to predict image entropy,
keeps the most complex ones, and fine-tunes the kept images so that features of an 8-layer 3x3
CNN match those of the full set (an L2 term plus a KL term). No pretrained ViT can be
downloaded at a hospital, so here:

1. **Complexity** = mean *local* Shannon entropy: intensities are quantised into ``bins``
   levels, a ``window`` x ``window`` box filter gives each pixel its local histogram, and the
   entropy of that histogram is averaged over the slice (a local feature extractor; flat air
   and uniform tissue score low, textured lung and bone high), computed on the clean HQ slices
   as the seed does.
2. **Selection**: the ``pool_fraction`` most complex slices form a pool (at least ``ipc``);
   ``ipc`` slices are taken from it at evenly spaced ranks of their axial position, so the
   picks are complex *and* spread (the seed reports that its picks are more diverse).
3. **Distribution alignment**: starting from the picked slices, the pixels are optimised
   (Adam, ``lr``, ``steps``) so that a fresh random ``cnn_depth``-layer 3x3 CNN per step
   (stride 1, instance norm, ReLU) gives synthetic patches the same feature distribution as
   random real patches of the patient: squared distance of per-channel means (L2) plus the KL
   divergence between per-channel Gaussian fits, ``KL(N(real) || N(syn))``.

Because it starts from real slices and moves them only a little, the output can be a
near-copy of a real slice; the memorisation audit measures that. Needs ``ipc <= slices``.

Example:
    >>> import torch
    >>> flat, noisy = torch.zeros(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    >>> bool(local_entropy(noisy) > local_entropy(flat))
    True
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from medidd.distill.base import DistillContext, Distilled, finish, register_method
from medidd.distill.baselines._common import (
    RandomConvNet,
    check_budget,
    generator,
    probe_loss,
    real_images,
    report,
)
from medidd.distill.config import DistillConfig
from medidd.distill.matching import random_patches
from medidd.distill.options import TripleDOptions
from medidd.preprocess.slices import SliceSet
from medidd.seeds import derive


def local_entropy(images: torch.Tensor, bins: int = 16, window: int = 9) -> torch.Tensor:
    """Mean local Shannon entropy (bits) of each image (N, 1, H, W) in [0, 1] -> (N,)."""
    q = (images.clamp(0, 1) * (bins - 1)).round().long().squeeze(1)
    onehot = F.one_hot(q, bins).permute(0, 3, 1, 2).float()
    hist = F.avg_pool2d(onehot, window, stride=1, padding=window // 2, count_include_pad=False)
    ent = -(hist * torch.log2(hist.clamp_min(1e-12))).sum(dim=1)
    return ent.mean(dim=(1, 2))


def select_complex(scores: torch.Tensor, z: torch.Tensor, ipc: int, pool_fraction: float
                   ) -> list[int]:
    """Indices of ``ipc`` slices: the ``pool_fraction`` most complex, evenly spread in ``z``.

    Example:
        >>> select_complex(torch.tensor([0.1, 0.9, 0.8, 0.2]), torch.arange(4.0), 2, 0.5)
        [1, 2]
    """
    n_pool = min(len(scores), max(ipc, round(pool_fraction * len(scores))))
    pool = scores.argsort(descending=True)[:n_pool]
    pool = pool[z[pool].argsort()]
    ranks = torch.linspace(0, n_pool - 1, ipc).round().long() if ipc > 1 else torch.tensor(
        [n_pool // 2])
    return [int(pool[r]) for r in ranks]


def _alignment_loss(net: RandomConvNet, real: torch.Tensor, syn: torch.Tensor, kl_weight: float
                    ) -> torch.Tensor:
    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = net(x).transpose(0, 1).flatten(1)
        return f.mean(1), f.var(1, unbiased=False) + 1e-4

    with torch.no_grad():
        mu_r, var_r = stats(real)
    mu_s, var_s = stats(syn)
    l2 = ((mu_r - mu_s) ** 2).sum()
    kl = 0.5 * (torch.log(var_s / var_r) + (var_r + (mu_r - mu_s) ** 2) / var_s - 1.0).sum()
    return l2 + kl_weight * kl


@register_method("tripled")
class TripleD:
    """Complexity-ranked real slices, fine-tuned by random-CNN distribution alignment."""

    name = "tripled"
    ships_real_slices = False
    needs_prior = False

    def __init__(self, cfg: DistillConfig, options: TripleDOptions | None = None) -> None:
        self.cfg = cfg
        self.opt = options or cfg.tripled

    def _loss(self, real: torch.Tensor, syn: torch.Tensor, seed: int) -> torch.Tensor:
        o, g = self.opt, generator(seed, "tripled")
        net = RandomConvNet(o.cnn_width, o.cnn_depth, pool=False,
                            seed=derive(seed, "net")).to(syn.device)
        (r,) = random_patches([real], o.real_patches, self.cfg.matching.patch_size, g)
        (s,) = random_patches([syn], o.syn_patches, self.cfg.matching.patch_size, g)
        return _alignment_loss(net, r, s, o.kl_weight)

    def distill(self, real: SliceSet, ctx: DistillContext) -> Distilled:
        """Select complex slices, then align their feature distribution to the patient's."""
        start = time.perf_counter()
        check_budget(real, ctx.ipc, self.name)
        images = real_images(real, ctx)
        scores = torch.cat([local_entropy(images[i : i + 16], self.opt.bins, self.opt.window)
                            for i in range(0, len(images), 16)])
        idx = select_complex(scores.cpu(), torch.as_tensor(real.z).float().cpu(), ctx.ipc,
                             self.opt.pool_fraction)
        init = images[idx]
        syn = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([syn], lr=self.opt.lr)
        probe_start = probe_loss(lambda s: self._loss(images, syn.detach(), s), ctx.seed)
        last = float("nan")
        for step in range(self.opt.steps):
            loss = self._loss(images, syn, derive(ctx.seed, "tripled-step", step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                syn.clamp_(0.0, 1.0)
            last = float(loss.detach())
            report(ctx, step + 1, self.opt.steps, last)
        probe_end = probe_loss(lambda s: self._loss(images, syn.detach(), s), ctx.seed)
        info = {"probe_start": probe_start, "probe_end": probe_end, "final_loss": last,
                "steps": float(self.opt.steps), "seconds": time.perf_counter() - start,
                "complexity_min": float(scores[idx].min()),
                "complexity_median_all": float(scores.median()),
                "init_change": float(F.l1_loss(syn.detach(), init))}
        return finish(syn, ctx, info)
