"""The one measurement path: train a downstream net on HQ images, score it on held-out patients.

Every number MediDD reports about utility comes from here: the distillation benchmark, the
privacy audit's utility line, the demo, and federated evaluation at the nodes. The recipe:

1. train ``cfg.net`` with :func:`~medidd.train.train_enhancer` on the training HQ images, LQ
   re-drawn every epoch by :func:`~medidd.degrade.draw_lq` (or fixed shipped pairs);
2. draw the held-out LQ with :func:`heldout_lq` — image ``i`` from ``derive(eval_seed,
   "heldout", i)``, so every method of a benchmark fold, and every round of a federation, is
   scored on the very same noisy inputs;
3. PSNR / SSIM (data range 1) per held-out slice, averaged
   (:func:`~medidd.train.evaluate_enhancer`), and :func:`gain_retained` against a full-data
   reference.

Example:
    >>> import torch
    >>> from medidd.degrade import DegradationSpec, build_degradation
    >>> op = build_degradation(DegradationSpec(kind="gaussian", noise_sigma=0.1))
    >>> hq = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    >>> cfg = TrainConfig(net={"name": "dncnn", "width": 4, "depth": 2}, steps=3, patch_size=16)
    >>> s = train_and_score(hq, hq, cfg, op)
    >>> s.eval.n, s.n_train, round(s.eval.psnr_lq, 1) == round(score_model(
    ...     s.model, hq, op).psnr_lq, 1)
    (4, 4, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medidd.degrade.draw import Degrade, draw_lq
from medidd.preprocess.slices import SliceSet
from medidd.train.evaluate import EvalResult, evaluate_enhancer
from medidd.train.trainer import Progress, TrainConfig, TrainResult, train_enhancer

__all__ = [
    "Scored",
    "gain_retained",
    "heldout_lq",
    "score_model",
    "stack_images",
    "train_and_score",
]

#: held-out images per forward pass when scoring
EVAL_BATCH = 32

Images = torch.Tensor | Sequence[SliceSet]


def stack_images(images: Images) -> torch.Tensor:
    """A float32 (N, 1, H, W) tensor from a tensor or from patients' :class:`SliceSet` s.

    Example:
        >>> import torch
        >>> a = SliceSet(torch.zeros(2, 1, 8, 8), torch.zeros(2), "p-1", "CT", (0., 1.))
        >>> stack_images([a, a]).shape
        torch.Size([4, 1, 8, 8])
    """
    if isinstance(images, torch.Tensor):
        out = images
    else:
        if not images:
            raise ValueError("no patients to take images from")
        out = torch.cat([torch.as_tensor(s.images).as_subclass(torch.Tensor) for s in images])
    return out.detach().float()


def heldout_lq(hq: torch.Tensor, degrade: Degrade, eval_seed: int = 0) -> torch.Tensor:
    """The held-out LQ inputs: image ``i`` degraded with ``derive(eval_seed, "heldout", i)``.

    Example:
        >>> import torch
        >>> noisy = lambda x, s: x + 0.01 * torch.randn(x.shape, generator=
        ...     torch.Generator().manual_seed(s))
        >>> hq = torch.zeros(3, 1, 8, 8)
        >>> bool(torch.equal(heldout_lq(hq, noisy), heldout_lq(hq, noisy)))
        True
    """
    return draw_lq(hq, degrade, eval_seed, "heldout")


def score_model(
    model: nn.Module,
    hq: Images,
    degrade: Degrade,
    *,
    eval_seed: int = 0,
    lq: torch.Tensor | None = None,
    batch_size: int = EVAL_BATCH,
) -> EvalResult:
    """PSNR/SSIM of ``model`` on the held-out ``hq`` (and of its LQ input), LQ drawn by
    :func:`heldout_lq` unless given."""
    test_hq = stack_images(hq)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if lq is None:
        lq = heldout_lq(test_hq.to(device), degrade, eval_seed)
    return evaluate_enhancer(model, test_hq, lq, batch_size=batch_size)


def gain_retained(psnr: float, psnr_lq: float, psnr_full: float) -> float:
    """Share of the full-data PSNR gain over the input that a model keeps:
    ``(psnr - psnr_lq) / (psnr_full - psnr_lq)``; NaN when full data gains nothing (the ratio
    is undefined then, e.g. on a patient unlike the training site).

    Example:
        >>> gain_retained(34.0, 30.0, 35.0)
        0.8
        >>> gain_retained(31.0, 30.0, 30.0)
        nan
    """
    denom = psnr_full - psnr_lq
    return (psnr - psnr_lq) / denom if abs(denom) > 1e-6 else math.nan


@dataclass
class Scored:
    """A trained model, its training record, its held-out scores and the training set size."""

    model: nn.Module
    train: TrainResult
    eval: EvalResult
    n_train: int


def train_and_score(
    train_hq: Images,
    test_hq: Images,
    cfg: TrainConfig,
    degrade: Degrade,
    *,
    train_lq: torch.Tensor | None = None,
    eval_seed: int = 0,
    test_lq: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> Scored:
    """Train ``cfg.net`` on ``train_hq`` and score it on ``test_hq`` (see the module doc).

    Args:
        train_hq: training HQ images (a package's, or real slices) or patients.
        test_hq: held-out real images or patients (never in ``train_hq``).
        cfg: the downstream training recipe (net, steps, seed, device).
        degrade: the task's degradation (``build_degradation(spec, window)``).
        train_lq: fixed LQ partners (shipped pairs); default: re-drawn from ``degrade``.
        eval_seed: names the held-out LQ draw (keep it fixed to compare methods).
        test_lq: held-out LQ computed once by the caller (:func:`heldout_lq`) to save time.
        progress: called after each training step with (steps done, loss).
    """
    hq = stack_images(train_hq)
    if train_lq is not None and not cfg.redraw_lq:
        result = train_enhancer(hq, train_lq, cfg, progress=progress)
    else:
        result = train_enhancer(hq, None, cfg, degrade=degrade, progress=progress)
    ev = score_model(result.model, test_hq, degrade, eval_seed=eval_seed, lq=test_lq)
    return Scored(model=result.model, train=result, eval=ev, n_train=int(hq.shape[0]))
