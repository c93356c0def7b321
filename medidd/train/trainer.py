"""Train a same-size enhancement net on HQ/LQ pairs with a fixed iteration budget.

Pairs come either fixed (``hq``, ``lq``) or as HQ images plus a seeded degradation
``degrade(hq, seed) -> lq``, re-drawn once per epoch (``redraw_lq``) so the net never sees the
same noise twice. Each step samples a batch of random patches (seeded ``torch.Generator``) and
hands it to a :class:`~medidd.train.step.StepRule`. Identical inputs and config give identical
weights on the same device and torch build.

Example:
    >>> import torch
    >>> hq = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    >>> noisy = lambda x, seed: x + 0.05 * torch.randn(
    ...     x.shape, generator=torch.Generator().manual_seed(seed))
    >>> cfg = TrainConfig(net=NetConfig(name="dncnn", width=8, depth=3), steps=5,
    ...                   batch_size=4, patch_size=16)
    >>> result = train_enhancer(hq, None, cfg, degrade=noisy)
    >>> result.steps, len(result.losses)
    (5, 5)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from medidd.config import StrictModel
from medidd.degrade.draw import Degrade, draw_lq
from medidd.degrade.ranged import DegradationRange, ranged
from medidd.lookup import look_up_option
from medidd.nets import NetConfig
from medidd.train.device import DEVICES, resolve_device, scoped_determinism
from medidd.train.losses import LOSSES, build_loss
from medidd.train.sampling import PatchSampler, crop
from medidd.train.step import STEP_RULES, StepRule, build_step_rule

logger = logging.getLogger(__name__)

Progress = Callable[[int, float], None]

SCHEDULES = ("cosine", "constant")


class TrainConfig(StrictModel):
    """Downstream training: net, budget, sampling, optimiser (AdamW), loss, step rule.

    Example:
        >>> TrainConfig(loss="l1+ssim", net={"name": "redcnn", "width": 16}).net.width
        16
    """

    net: NetConfig = Field(default_factory=NetConfig)
    steps: int = Field(800, ge=1, description="fixed number of optimisation steps")
    batch_size: int = Field(16, ge=1)
    patch_size: int | None = Field(48, ge=4, description="square patches; None = whole images")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: str = Field("cosine", description="cosine (to 0 at the last step) | constant")
    loss: str = Field("l1", description="l1 | l2 | l1+ssim")
    ssim_weight: float = Field(0.84, ge=0, le=1, description="SSIM share of l1+ssim")
    seed: int = 0
    device: str = Field("cpu", description="cpu | cuda | auto")
    redraw_lq: bool = Field(True, description="re-draw LQ with a new seed every epoch")
    lq_range: DegradationRange | None = Field(
        None, description="train over a range of one degradation parameter (e.g. dose 0.1 to "
        "0.5) instead of the package's one value, so patients of another size or scanner are "
        "helped too (medidd.degrade.ranged); None = the package's value only")
    deterministic: bool = Field(True, description="deterministic algorithms while training")
    step_rule: str = Field("none", description="per-step update rule (see STEP_RULES)")
    step_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return look_up_option(value, SCHEDULES, what="schedule")

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        return look_up_option(value, LOSSES, what="loss")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return look_up_option(value, DEVICES, what="device")

    @field_validator("step_rule")
    @classmethod
    def _step_rule(cls, value: str) -> str:
        return look_up_option(value, STEP_RULES, what="step rule")


@dataclass
class TrainResult:
    """The trained ``model`` (eval mode, on the training device), the loss of every step,
    wall-clock ``seconds``, the number of ``steps`` run, and per-step extras of the step rule."""

    model: nn.Module
    losses: list[float]
    seconds: float
    steps: int
    history: dict[str, list[float]] = field(default_factory=dict)


def _check_inputs(hq: torch.Tensor, lq: torch.Tensor | None, degrade: Degrade | None) -> None:
    problems = []
    if hq.ndim != 4 or hq.shape[0] == 0:
        problems.append(f"hq must be a non-empty (N, C, H, W) tensor, got {tuple(hq.shape)}")
    if (lq is None) == (degrade is None):
        problems.append("pass exactly one of lq (fixed pairs) or degrade (re-drawn LQ)")
    if lq is not None and lq.shape != hq.shape:
        problems.append(f"lq shape {tuple(lq.shape)} differs from hq shape {tuple(hq.shape)}")
    if problems:
        raise ValueError("train_enhancer: " + "; ".join(problems))


def _scheduler(
    optimizer: torch.optim.Optimizer, name: str, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)


def train_enhancer(
    hq: torch.Tensor,
    lq: torch.Tensor | None,
    cfg: TrainConfig,
    *,
    degrade: Degrade | None = None,
    progress: Progress | None = None,
    step_rule: StepRule | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``cfg.net`` for ``cfg.steps`` steps on patches of the pairs ``(lq, hq)``.

    Args:
        hq: (N, C, H, W) float32 high-quality images in [0, 1] (C = 1 for CT/MR).
        lq: (N, C, H, W) fixed low-quality partners, or None when ``degrade`` is given.
        cfg: the training configuration.
        degrade: ``degrade(hq, seed) -> lq`` (same shape); the LQ set is drawn by
            :func:`~medidd.degrade.draw_lq` (image ``i`` of epoch ``e`` from
            ``derive(cfg.seed, "train", e, i)``) once, or once per epoch (``ceil(N /
            batch_size)`` steps) if ``cfg.redraw_lq``.
        progress: called after every step with (steps done, that step's loss).
        step_rule: a ready :class:`StepRule`, overriding ``cfg.step_rule``/``step_options``.
        init_state: a ``state_dict`` of ``cfg.net`` to start from (fine-tuning, FedAvg rounds)
            instead of the seeded fresh initialisation.

    Returns:
        :class:`TrainResult`; the model is left in eval mode on ``cfg.device``.

    The global torch RNG is seeded with ``cfg.seed`` for the net's initialisation and restored
    afterwards; patches use their own generator; deterministic algorithms are on while training
    (``cfg.deterministic``) and the previous global settings restored.

    Example:
        >>> import torch
        >>> hq = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> cfg = TrainConfig(net={"name": "srcnn", "width": 8}, steps=2, patch_size=None)
        >>> train_enhancer(hq, hq.clone(), cfg).steps
        2
    """
    _check_inputs(hq, lq, degrade)
    degrade = ranged(degrade, cfg.lq_range)
    device = resolve_device(cfg.device)
    rule = step_rule
    if rule is None:
        rule = build_step_rule(cfg.step_rule, **cfg.step_options)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), scoped_determinism(cfg.deterministic):
        torch.manual_seed(cfg.seed)
        model = cfg.net.build()
        if init_state is not None:
            model.load_state_dict(dict(init_state))
        model = model.to(device)
        return _train(model, hq, lq, cfg, device, rule, degrade, progress)


def _train(
    model: nn.Module,
    hq: torch.Tensor,
    lq: torch.Tensor | None,
    cfg: TrainConfig,
    device: torch.device,
    rule: StepRule,
    degrade: Degrade | None,
    progress: Progress | None,
) -> TrainResult:
    start = time.perf_counter()
    hq = hq.to(device=device, dtype=torch.float32)
    n = hq.shape[0]
    sampler = PatchSampler(
        n,
        (hq.shape[-2], hq.shape[-1]),
        cfg.batch_size,
        cfg.patch_size,
        torch.Generator().manual_seed(cfg.seed),
    )
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    if lq is not None:
        lq_now = lq.to(device=device, dtype=torch.float32)
    elif degrade is not None:
        lq_now = draw_lq(hq, degrade, cfg.seed, "train", 0)
    else:
        raise ValueError("train_enhancer needs lq or degrade")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg.schedule, cfg.steps)
    loss_fn = build_loss(cfg.loss, cfg.ssim_weight)
    rule.bind(model, device, cfg.seed)
    logger.info(
        "training %s for %d steps on %d images (%s, patch %s, batch %d)",
        cfg.net.name, cfg.steps, n, device, cfg.patch_size, cfg.batch_size,
    )
    model.train()
    losses: list[float] = []
    history: dict[str, list[float]] = {}
    log_every = max(1, cfg.steps // 10)
    for step in range(cfg.steps):
        if degrade is not None and cfg.redraw_lq and step > 0 and step % steps_per_epoch == 0:
            lq_now = draw_lq(hq, degrade, cfg.seed, "train", step // steps_per_epoch)
        idx, ys, xs = sampler.next()
        batch_hq = crop(hq, idx, ys, xs, cfg.patch_size)
        batch_lq = crop(lq_now, idx, ys, xs, cfg.patch_size)
        out = rule.step(model, optimizer, batch_lq, batch_hq, loss_fn)
        scheduler.step()
        if not math.isfinite(out.loss):
            raise FloatingPointError(
                f"training loss became {out.loss} at step {step + 1}; lower lr (now {cfg.lr})"
            )
        losses.append(out.loss)
        for key, value in out.metrics.items():
            history.setdefault(key, []).append(value)
        if progress is not None:
            progress(step + 1, out.loss)
        if (step + 1) % log_every == 0:
            logger.debug("step %d/%d loss %.5f", step + 1, cfg.steps, out.loss)
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("trained %s in %.1f s (final loss %.5f)", cfg.net.name, seconds, losses[-1])
    return TrainResult(model, losses, seconds, cfg.steps, history)
