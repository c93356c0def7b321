"""Coreset baselines that ship real slices: ``full``, ``random``, ``herding``, ``kcenter``.

They are non-private references (the output *is* the patient's data). ``herding`` and
``kcenter`` work on the features of a fixed random convolutional encoder (no pretrained weights
can be downloaded at a hospital): three conv-ReLU stages of widths w, 2w, 4w, each followed by
2x average pooling; every stage's maps are global-average-pooled and concatenated, then each
feature is standardised over the patient's slices so no scale dominates.

Example:
    >>> import torch
    >>> from medidd.distill.config import SelectionConfig
    >>> enc = RandomEncoder(SelectionConfig(encoder_width=4))
    >>> enc(torch.rand(3, 1, 32, 32)).shape
    torch.Size([3, 28])
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from medidd.distill.base import DistillContext, Distilled, finish, register_method
from medidd.distill.baselines._common import check_budget, pick_real, real_images
from medidd.distill.config import DistillConfig, SelectionConfig
from medidd.preprocess.slices import SliceSet


class RandomEncoder(nn.Module):
    """A fixed, seeded random conv encoder giving multi-scale global-average-pooled features
    (``7 * encoder_width`` per image)."""

    def __init__(self, cfg: SelectionConfig) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(cfg.encoder_seed)
        w = cfg.encoder_width
        widths = [1, w, 2 * w, 4 * w]
        self.weights = nn.ParameterList()
        for cin, cout in itertools.pairwise(widths):
            std = (2.0 / (cin * 9)) ** 0.5  # He initialisation keeps activations in scale
            weight = torch.randn(cout, cin, 3, 3, generator=g) * std
            self.weights.append(nn.Parameter(weight, requires_grad=False))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x
        for weight in self.weights:
            h = F.avg_pool2d(F.relu(F.conv2d(h, weight, padding=1)), 2)
            feats.append(h.mean(dim=(2, 3)))
        return torch.cat(feats, dim=1)


def slice_features(images: torch.Tensor, cfg: SelectionConfig, batch: int = 32) -> torch.Tensor:
    """Standardised encoder features (N, D) of ``images`` (N, 1, H, W)."""
    enc = RandomEncoder(cfg).to(images.device)
    feats = torch.cat([enc(images[i : i + batch]) for i in range(0, len(images), batch)])
    std = feats.std(dim=0, unbiased=False).clamp_min(1e-8)
    return (feats - feats.mean(dim=0)) / std


def herding_order(feats: torch.Tensor, k: int) -> list[int]:
    """Greedy herding (Welling 2009): each step adds the sample that brings the running mean of
    the chosen features closest to the mean of all features.

    Example:
        >>> herding_order(torch.tensor([[0.0], [1.0], [2.0]]), 1)
        [1]
    """
    mu = feats.mean(dim=0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    for t in range(1, k + 1):
        cand = (total.unsqueeze(0) + feats) / t
        dist = (cand - mu).norm(dim=1)
        if chosen:
            dist[chosen] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        total = total + feats[i]
    return chosen


def kcenter_order(feats: torch.Tensor, k: int) -> list[int]:
    """Greedy k-center (farthest-first traversal); the first centre is the sample closest to
    the mean feature.

    Example:
        >>> kcenter_order(torch.tensor([[0.0], [1.0], [5.0]]), 2)
        [1, 2]
    """
    first = int((feats - feats.mean(dim=0)).norm(dim=1).argmin())
    chosen = [first]
    dist = (feats - feats[first]).norm(dim=1)
    for _ in range(k - 1):
        dist[chosen] = -1.0
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, (feats - feats[i]).norm(dim=1))
    return chosen


class _SelectionMethod:
    """Shared plumbing: pick indices, ship those real slices and their LQ."""

    name = "selection"
    ships_real_slices = True
    needs_prior = False

    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg

    def select(self, real: SliceSet, ctx: DistillContext) -> list[int]:
        raise NotImplementedError

    def distill(self, real: SliceSet, ctx: DistillContext) -> Distilled:
        """Ship the selected real slices (HQ) and their degraded partners (LQ)."""
        idx = self.select(real, ctx)
        hq = real_images(real, ctx)[idx]
        return finish(hq, ctx, {"selected_" + str(i): float(j) for i, j in enumerate(idx)})


@register_method("full")
class FullData(_SelectionMethod):
    """Every real slice of the patient (ignores ``ipc``): the upper reference."""

    name = "full"

    def select(self, real: SliceSet, ctx: DistillContext) -> list[int]:
        return list(range(len(real)))


@register_method("random")
class RandomSlices(_SelectionMethod):
    """``ipc`` distinct real slices drawn uniformly with ``ctx.seed``."""

    name = "random"

    def select(self, real: SliceSet, ctx: DistillContext) -> list[int]:
        check_budget(real, ctx.ipc, self.name)
        return [int(i) for i in pick_real(real, ctx.ipc, ctx.seed)]


@register_method("herding")
class Herding(_SelectionMethod):
    """Herding on random-encoder features (deterministic given ``selection.encoder_seed``)."""

    name = "herding"

    def select(self, real: SliceSet, ctx: DistillContext) -> list[int]:
        check_budget(real, ctx.ipc, self.name)
        feats = slice_features(real_images(real, ctx), self.cfg.selection)
        return herding_order(feats, ctx.ipc)


@register_method("kcenter")
class KCenter(_SelectionMethod):
    """Greedy k-center on random-encoder features (deterministic given the encoder seed)."""

    name = "kcenter"

    def select(self, real: SliceSet, ctx: DistillContext) -> list[int]:
        check_budget(real, ctx.ipc, self.name)
        feats = slice_features(real_images(real, ctx), self.cfg.selection)
        return kcenter_order(feats, ctx.ipc)
