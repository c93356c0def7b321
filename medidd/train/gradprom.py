"""Task-driven enhancement: an auxiliary segmenter's gradient, added naively or by GradProm.

The enhancement net ``E`` is trained on ``L_enh = loss(E(lq), hq)``; an auxiliary segmenter
``S`` judges the enhanced image by ``L_aux = CE(S(E(lq)), tissue_labels(hq))`` (air / fat /
soft tissue / bone from HU thresholds of the HQ image, :mod:`medidd.train.labels`, so the
labels of a distilled package are derived on the aggregator from its HQ images). Both
gradients are taken with respect to ``E``'s parameters only:

* ``step_rule: sum`` (naive joint loss): ``g = g_enh + w * g_aux``;
* ``step_rule: gradprom`` (seed 003, Zhang & Cheng 2025): ``g = g_enh + w * g_aux`` only when
  ``cos(g_enh, g_aux) > 0``, else ``g = g_enh``. The cosine is over the flattened
  concatenation of every parameter's gradient (``per_layer=True`` gates each parameter tensor
  on its own cosine instead). A tie, ``cos == 0`` (orthogonal, or a zero gradient), is *not*
  aligned: the enhancement gradient alone is used, as "aligned in the same direction" asks
  for a strictly positive cosine.

Why GradProm cannot bias the enhancement: with ``d = -lr * g`` (plain SGD), the first-order
decrease of ``L_enh`` is ``lr * <g_enh, g>``, which is ``lr * (|g_enh|^2 + w <g_enh, g_aux>)
>= lr * |g_enh|^2`` when the gate is open and ``lr * |g_enh|^2`` when it is shut: never less
than a plain step. (Adam rescales the gradient per coordinate, so with the trainer's AdamW the
statement holds for the gradient handed to the optimiser, as in the paper.)

The auxiliary model. By default it is pre-trained once and then *frozen* (``freeze_aux``):
the task it stands for is fixed, and the enhancer is not allowed to co-adapt with it. With
``freeze_aux=False`` it keeps training on the enhanced outputs (its own cross-entropy, lr
``aux_lr``), as in ESTR-style joint training; GradProm still only gates the enhancer's update.
Pass a pre-trained ``segmenter`` (copied, never modified; see
:func:`~medidd.nets.segment.train_segmenter`), or none: then a fresh one is pre-trained on the
HQ batches of the first ``pretrain_steps`` training steps, while the enhancer takes plain steps
(their ``cos``/``aligned`` are recorded as NaN). That keeps the rule usable from a config
alone (``TrainConfig(step_rule="gradprom", step_options={...})``).

Per-step metrics (``TrainResult.history``): ``cos``, ``aligned`` (1/0, or the fraction of
aligned parameter tensors with ``per_layer``), ``norm_ratio`` (``|g_aux| / |g_enh|``, before
the weight), ``aux_loss``.

Example:
    >>> import torch
    >>> g_enh, g_aux = [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]
    >>> p = promote(g_enh, g_aux, weight=0.5)
    >>> p.grads[0].tolist(), round(p.cos, 4), p.aligned
    ([1.5, 0.5], 0.7071, 1.0)
    >>> promote(g_enh, [torch.tensor([-1.0, 1.0])], weight=0.5).grads[0].tolist()
    [1.0, 0.0]
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from medidd.nets.segment import SegmenterConfig, segmentation_loss
from medidd.seeds import derive
from medidd.train.labels import (
    DEFAULT_WINDOW,
    HU_THRESHOLDS,
    TISSUE_CLASSES,
    check_thresholds,
    tissue_labels,
)
from medidd.train.losses import LossFn
from medidd.train.step import STEP_RULES, StepOutput, StepRule

logger = logging.getLogger(__name__)


@dataclass
class Promotion:
    """The gradient to apply (one tensor per parameter), the cosine of the two gradients over
    all parameters, whether the auxiliary gradient was added (1.0 / 0.0; with ``per_layer``,
    the fraction of parameter tensors that took it) and ``|g_aux| / |g_enh|``."""

    grads: list[torch.Tensor]
    cos: float
    aligned: float
    norm_ratio: float = math.nan


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for x, y in zip(a, b, strict=True):
        total = total + torch.sum(x.detach().double() * y.detach().double())
    return total


def flat_cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Cosine between two gradients given per parameter, as if each were flattened and
    concatenated; 0.0 when either is zero. Computed in float64.

    Example:
        >>> import torch
        >>> flat_cosine([torch.ones(2), torch.ones(1)], [torch.ones(2), -torch.ones(1)])
        0.3333333333333333
    """
    norm = math.sqrt(float(_dot(a, a)) * float(_dot(b, b)))
    return float(_dot(a, b)) / norm if norm > 0 else 0.0


def promote(
    g_enh: Sequence[torch.Tensor],
    g_aux: Sequence[torch.Tensor],
    weight: float,
    *,
    gated: bool = True,
    per_layer: bool = False,
    normalize: bool = False,
) -> Promotion:
    """Combine the enhancement and auxiliary gradients (GradProm if ``gated``, else the sum).

    Args:
        g_enh: gradient of the enhancement loss, one tensor per parameter.
        g_aux: gradient of the auxiliary loss w.r.t. the same parameters.
        weight: ``w >= 0``, the auxiliary gradient's weight.
        gated: add ``w * g_aux`` only where ``cos > 0`` (GradProm); False adds it always.
        per_layer: gate each parameter tensor on its own cosine instead of the global one.
        normalize: rescale ``g_aux`` to the norm of ``g_enh`` before weighting, so ``w`` is
            the auxiliary share of the step whatever the two losses' scales; direction and
            sign are kept, so the gate and the first-order guarantee are unchanged.

    Example:
        >>> import torch
        >>> promote([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 2.0])], 1.0).aligned
        0.0
    """
    if len(g_enh) != len(g_aux):
        raise ValueError(f"{len(g_enh)} enhancement vs {len(g_aux)} auxiliary gradients")
    if weight < 0:
        raise ValueError(f"the auxiliary weight must be >= 0, got {weight}")
    cos = flat_cosine(g_enh, g_aux)
    norm_enh = math.sqrt(float(_dot(g_enh, g_enh)))
    norm_aux = math.sqrt(float(_dot(g_aux, g_aux)))
    ratio = norm_aux / norm_enh if norm_enh > 0 else math.inf
    if normalize:
        weight = weight * norm_enh / norm_aux if norm_aux > 0 else 0.0
    if not gated or (not per_layer and cos > 0):
        grads = [e + weight * a for e, a in zip(g_enh, g_aux, strict=True)]
        return Promotion(grads, cos, 1.0, ratio)
    if not per_layer:
        return Promotion([e.clone() for e in g_enh], cos, 0.0, ratio)
    grads, taken = [], 0
    for e, a in zip(g_enh, g_aux, strict=True):
        if flat_cosine([e], [a]) > 0:
            grads.append(e + weight * a)
            taken += 1
        else:
            grads.append(e.clone())
    return Promotion(grads, cos, taken / max(1, len(grads)), ratio)


def aligned_fraction(history: Mapping[str, Sequence[float]]) -> float:
    """Mean of the recorded ``aligned`` values, ignoring the NaN of pre-training steps.

    Example:
        >>> aligned_fraction({"aligned": [1.0, 0.0, float("nan"), 1.0]})
        0.6666666666666666
    """
    values = [v for v in history.get("aligned", []) if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


class TaskDrivenRule(StepRule):
    """``step_rule: sum``: the enhancement gradient plus ``aux_weight`` times the auxiliary
    segmenter's gradient, every step. :class:`GradPromRule` gates the addition.

    Args:
        aux_weight: ``w``, the weight of the auxiliary gradient (>= 0).
        freeze_aux: keep the segmenter fixed after pre-training (default), or keep training
            it on the enhanced outputs.
        segmenter: a pre-trained segmenter taking (N, 1, H, W) images to (N, C, H, W) logits;
            copied at :meth:`bind`. None: pre-train a fresh one from ``aux`` during the first
            ``pretrain_steps`` steps on the HQ batches.
        aux: :class:`~medidd.nets.segment.SegmenterConfig` (or its dict) of a fresh segmenter;
            its ``lr`` is the pre-training learning rate.
        pretrain_steps: steps of that pre-training (only without ``segmenter``).
        aux_lr: learning rate (AdamW) of the segmenter while it trains on enhanced outputs.
        window: the HU window the images were normalised with.
        thresholds: the HU class bounds (:data:`~medidd.train.labels.HU_THRESHOLDS`).
        per_layer: gate per parameter tensor (GradProm only).
        normalize_aux: rescale the auxiliary gradient to the enhancement gradient's norm
            before ``aux_weight`` (see :func:`promote`); off = the paper's plain weighting.
    """

    name: ClassVar[str] = "sum"
    gated: ClassVar[bool] = False

    def __init__(
        self,
        aux_weight: float = 0.1,
        freeze_aux: bool = True,
        segmenter: nn.Module | None = None,
        aux: SegmenterConfig | Mapping[str, Any] | None = None,
        pretrain_steps: int = 100,
        aux_lr: float = 1e-3,
        window: Sequence[float] = DEFAULT_WINDOW,
        thresholds: Sequence[float] = HU_THRESHOLDS,
        per_layer: bool = False,
        normalize_aux: bool = False,
    ) -> None:
        self.aux_cfg = (
            aux if isinstance(aux, SegmenterConfig) else SegmenterConfig.model_validate(aux or {})
        )
        self.window = (float(window[0]), float(window[1]))
        self.thresholds = tuple(float(t) for t in thresholds)
        problems = []
        if not aux_weight >= 0:
            problems.append(f"aux_weight must be >= 0, got {aux_weight}")
        if aux_lr <= 0:
            problems.append(f"aux_lr must be > 0, got {aux_lr}")
        if segmenter is None and pretrain_steps < 1:
            problems.append(
                "without a pre-trained segmenter, pretrain_steps must be >= 1 (the segmenter "
                "would stay random); pass segmenter= or raise pretrain_steps"
            )
        if self.aux_cfg.n_classes != len(self.thresholds) + 1:
            problems.append(
                f"aux.n_classes={self.aux_cfg.n_classes} but {len(self.thresholds)} thresholds "
                f"make {len(self.thresholds) + 1} classes ({', '.join(TISSUE_CLASSES)})"
            )
        try:
            check_thresholds(self.window, self.thresholds)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError(f"step rule '{self.name}': " + "; ".join(problems))
        self.aux_weight = float(aux_weight)
        self.freeze_aux = freeze_aux
        self.segmenter = segmenter
        self.pretrain_steps = pretrain_steps if segmenter is None else 0
        self.aux_lr = aux_lr
        self.per_layer = per_layer
        self.normalize_aux = normalize_aux
        self.seg: nn.Module | None = None
        self.aux_optimizer: torch.optim.Optimizer | None = None
        self._pretrain_left = 0

    def bind(self, model: nn.Module, device: torch.device, seed: int) -> None:
        """Copy (or build) the segmenter onto ``device`` and set up its optimiser."""
        if self.segmenter is not None:
            seg = copy.deepcopy(self.segmenter)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive(seed, "segmenter"))
                seg = self.aux_cfg.build()
        self.seg = seg.to(device)
        self._pretrain_left = self.pretrain_steps
        self.aux_optimizer = None
        if self._pretrain_left > 0 or not self.freeze_aux:
            lr = self.aux_cfg.lr if self._pretrain_left > 0 else self.aux_lr
            self.aux_optimizer = torch.optim.AdamW(self.seg.parameters(), lr=lr)
        self._set_aux_trainable(self._pretrain_left > 0 or not self.freeze_aux)

    def _set_aux_trainable(self, trainable: bool) -> None:
        if self.seg is None:
            return
        for p in self.seg.parameters():
            p.requires_grad_(trainable)
        self.seg.train(trainable)

    def _pretrain_step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lq: torch.Tensor,
        hq: torch.Tensor,
        loss_fn: LossFn,
        labels: torch.Tensor,
    ) -> StepOutput:
        seg, aux_opt = self.seg, self.aux_optimizer
        if seg is None or aux_opt is None:
            raise RuntimeError("bind() must be called before step()")
        aux_opt.zero_grad(set_to_none=True)
        loss = segmentation_loss(seg(hq), labels)
        loss.backward()
        aux_opt.step()
        aux_loss = float(loss.detach())
        self._pretrain_left -= 1
        if self._pretrain_left == 0:
            logger.info("auxiliary segmenter pre-trained (loss %.4f)", aux_loss)
            for group in aux_opt.param_groups:
                group["lr"] = self.aux_lr
            self._set_aux_trainable(not self.freeze_aux)
        out = super().step(model, optimizer, lq, hq, loss_fn)
        nan = math.nan
        out.metrics = {"cos": nan, "aligned": nan, "norm_ratio": nan, "aux_loss": aux_loss}
        return out

    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lq: torch.Tensor,
        hq: torch.Tensor,
        loss_fn: LossFn,
    ) -> StepOutput:
        """One update of ``model``: both gradients, the (gated) combination, the step."""
        seg = self.seg
        if seg is None:
            raise RuntimeError(f"step rule '{self.name}': bind() must be called before step()")
        labels = tissue_labels(hq, self.window, self.thresholds)
        if self._pretrain_left > 0:
            return self._pretrain_step(model, optimizer, lq, hq, loss_fn, labels)
        params = [p for p in model.parameters() if p.requires_grad]
        seg_params = [p for p in seg.parameters() if p.requires_grad]
        optimizer.zero_grad(set_to_none=True)
        enhanced, enh_loss = self.forward_loss(model, lq, hq, loss_fn)
        aux_loss = segmentation_loss(seg(enhanced), labels)
        g_enh = torch.autograd.grad(enh_loss, params, retain_graph=True, allow_unused=True)
        g_all = torch.autograd.grad(aux_loss, params + seg_params, allow_unused=True)
        promo = promote(
            _filled(g_enh, params),
            _filled(g_all[: len(params)], params),
            self.aux_weight,
            gated=self.gated,
            per_layer=self.per_layer,
            normalize=self.normalize_aux,
        )
        for p, g in zip(params, promo.grads, strict=True):
            p.grad = g
        optimizer.step()
        if seg_params and self.aux_optimizer is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)
            for p, g in zip(seg_params, _filled(g_all[len(params) :], seg_params), strict=True):
                p.grad = g
            self.aux_optimizer.step()
        metrics = {"cos": promo.cos, "aligned": promo.aligned, "norm_ratio": promo.norm_ratio}
        metrics["aux_loss"] = float(aux_loss.detach())
        return StepOutput(loss=float(enh_loss.detach()), metrics=metrics)


def _filled(
    grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


class SumRule(TaskDrivenRule):
    """``step_rule: sum``: the naive joint loss ``L_enh + w * L_aux`` (ungated)."""

    name: ClassVar[str] = "sum"
    gated: ClassVar[bool] = False


class GradPromRule(TaskDrivenRule):
    """``step_rule: gradprom``: ``g_enh + w * g_aux`` only when ``cos(g_enh, g_aux) > 0``.

    Example:
        >>> import torch
        >>> from medidd.nets.segment import TinyUNet
        >>> rule = GradPromRule(segmenter=TinyUNet(width=2))
        >>> model = torch.nn.Conv2d(1, 1, 3, padding=1)
        >>> rule.bind(model, torch.device("cpu"), seed=0)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> sorted(rule.step(model, opt, x, x, torch.nn.functional.l1_loss).metrics)
        ['aligned', 'aux_loss', 'cos', 'norm_ratio']
    """

    name: ClassVar[str] = "gradprom"
    gated: ClassVar[bool] = True


STEP_RULES["sum"] = SumRule
STEP_RULES["gradprom"] = GradPromRule
