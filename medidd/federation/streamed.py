"""Downstream training on images kept on disk, with memory that does not grow with them.

:func:`train_streamed` is :func:`medidd.train.train_enhancer` for a set read batch by batch
from :class:`~medidd.federation.spool.DiskImages`: the same net initialisation, patch sampler,
optimiser, schedule, loss and step rule, and the same LQ partners (image ``i`` of epoch ``e``
drawn by :func:`~medidd.degrade.draw_lq` with ``derive(cfg.seed, "train", e, i)``), only
drawn for the images of each batch instead of the whole set at once. With the same images it
gives the same weights as ``train_enhancer`` (bit for bit for per-pixel degradations such as
Gaussian or Rician noise; a batched Radon transform may round differently from a single one).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from medidd.federation.spool import DiskImages
    >>> from medidd.train import TrainConfig
    >>> d = Path(tempfile.mkdtemp())
    >>> np.save(d / "hq.npy", np.random.default_rng(0).random((3, 1, 16, 16), np.float32))
    >>> cfg = TrainConfig(net={"name": "dncnn", "width": 4, "depth": 3}, steps=2,
    ...                   batch_size=2, patch_size=8)
    >>> noisy = lambda x, seed: x + 0.05 * torch.randn(
    ...     x.shape, generator=torch.Generator().manual_seed(seed))
    >>> train_streamed(DiskImages([d / "hq.npy"]), None, cfg, degrade=noisy).steps
    2
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F

from medidd.degrade.draw import Degrade, draw_lq
from medidd.degrade.ranged import ranged
from medidd.federation.spool import DiskImages
from medidd.train import TrainConfig, TrainResult, build_loss, build_step_rule
from medidd.train.device import resolve_device, scoped_determinism
from medidd.train.sampling import PatchSampler, crop
from medidd.train.trainer import Progress, _scheduler

logger = logging.getLogger(__name__)


def _batch_lq(hq: torch.Tensor, indices: list[int], lq: DiskImages | None,
              degrade: Degrade | None, seed: int, epoch: int) -> torch.Tensor:
    """LQ partners of the batch images ``hq`` (set indices ``indices``)."""
    if lq is not None:
        out = lq.read(indices).to(hq.device)
        if out.shape[-2:] != hq.shape[-2:]:  # a smaller SR grid: onto the HQ grid
            out = F.interpolate(out, size=hq.shape[-2:], mode="bicubic", align_corners=False)
        return out
    assert degrade is not None
    return torch.cat([draw_lq(hq[j : j + 1], degrade, seed, "train", epoch, start=i)
                      for j, i in enumerate(indices)])


def train_streamed(hq: DiskImages, lq: DiskImages | None, cfg: TrainConfig, *,
                   degrade: Degrade | None = None,
                   progress: Progress | None = None) -> TrainResult:
    """Train ``cfg.net`` on the images of ``hq`` (read batch by batch) paired with ``lq``
    (fixed partners) or partners drawn by ``degrade`` (exactly one of the two).

    Raises ``ValueError`` on an empty set, both or neither of ``lq`` / ``degrade``, or
    ``lq`` of another length than ``hq``; ``FloatingPointError`` when the loss diverges.
    """
    if len(hq) == 0 or (lq is None) == (degrade is None) or (
            lq is not None and len(lq) != len(hq)):
        raise ValueError("train_streamed: needs a non-empty hq set and exactly one of lq (as "
                         "many images) or degrade")
    degrade = ranged(degrade, cfg.lq_range)
    device = resolve_device(cfg.device)
    rule = build_step_rule(cfg.step_rule, **cfg.step_options)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), scoped_determinism(cfg.deterministic):
        torch.manual_seed(cfg.seed)
        model = cfg.net.build().to(device)
        start = time.perf_counter()
        n = len(hq)
        sampler = PatchSampler(n, hq.image_shape[-2:], cfg.batch_size,  # type: ignore[arg-type]
                               cfg.patch_size, torch.Generator().manual_seed(cfg.seed))
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        scheduler = _scheduler(optimizer, cfg.schedule, cfg.steps)
        loss_fn = build_loss(cfg.loss, cfg.ssim_weight)
        rule.bind(model, device, cfg.seed)
        logger.info("training %s for %d steps on %d images read from disk (%s)",
                    cfg.net.name, cfg.steps, n, device)
        model.train()
        losses: list[float] = []
        history: dict[str, list[float]] = {}
        for step in range(cfg.steps):
            epoch = step // steps_per_epoch if cfg.redraw_lq else 0
            idx, ys, xs = sampler.next()
            unique = sorted(set(idx.tolist()))
            where = {i: j for j, i in enumerate(unique)}
            local = torch.tensor([where[i] for i in idx.tolist()], dtype=torch.long)
            images = hq.read(unique).to(device)
            partners = _batch_lq(images, unique, lq, degrade, cfg.seed, epoch)
            batch_hq = crop(images, local, ys, xs, cfg.patch_size)
            batch_lq = crop(partners, local, ys, xs, cfg.patch_size)
            out = rule.step(model, optimizer, batch_lq, batch_hq, loss_fn)
            scheduler.step()
            if not math.isfinite(out.loss):
                raise FloatingPointError(f"training loss became {out.loss} at step {step + 1}; "
                                         f"lower lr (now {cfg.lr})")
            losses.append(out.loss)
            for key, value in out.metrics.items():
                history.setdefault(key, []).append(value)
            if progress is not None:
                progress(step + 1, out.loss)
        model.eval()
        seconds = time.perf_counter() - start
    logger.info("trained %s in %.1f s (final loss %.5f)", cfg.net.name, seconds, losses[-1])
    return TrainResult(model, losses, seconds, cfg.steps, history)
