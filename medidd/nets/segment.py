"""A small segmentation net: the auxiliary recognition model of task-driven enhancement.

:class:`TinyUNet` is a plain U-Net (two 3x3 conv + ReLU per level, max-pool down, transposed
conv up, skip concatenation, 1x1 head) with no normalisation layers, so it behaves the same in
train and eval mode and on one image or a batch. :func:`train_segmenter` pre-trains it on
(image, label) pairs with seeded random patches; :func:`segment` and :func:`dice_per_class`
apply and score it. The cross-entropy is written with one-hot products (no ``nll_loss`` /
``gather``), so its gradients are deterministic on every device.

Example:
    >>> import torch
    >>> net = TinyUNet(width=4, levels=3)
    >>> net(torch.rand(2, 1, 30, 30)).shape
    torch.Size([2, 4, 30, 30])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medidd.config import StrictModel

logger = logging.getLogger(__name__)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(inplace=False),
    )


class TinyUNet(nn.Module):
    """U-Net with ``levels`` resolutions and ``width * 2**l`` channels at level ``l``.

    Any H, W: the input is zero-padded up to a multiple of ``2**(levels - 1)`` and the logits
    cropped back. ``width=8, levels=3`` has 29,348 parameters for 4 classes.

    Args:
        in_channels: image channels (1 for CT).
        n_classes: output classes (logits, N x n_classes x H x W).
        width: channels of the first level.
        levels: number of resolutions, >= 1 (1 = no down-sampling).
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = 4, width: int = 8, levels: int = 3
    ) -> None:
        super().__init__()
        if levels < 1 or width < 1 or n_classes < 2:
            raise ValueError(
                f"TinyUNet needs levels >= 1, width >= 1, n_classes >= 2; got levels={levels}, "
                f"width={width}, n_classes={n_classes}"
            )
        chans = [width * 2**level for level in range(levels)]
        self.levels = levels
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in chans:
            self.down.append(_block(c_prev, c))
            c_prev = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(nn.ConvTranspose2d(c * 2, c, 2, stride=2))
            self.merge.append(_block(c * 2, c))
        self.head = nn.Conv2d(chans[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]


class SegmenterConfig(StrictModel):
    """The auxiliary segmenter and its pre-training (AdamW, constant lr, random patches).

    ``balanced`` weights the cross-entropy by inverse class frequency of the training labels
    (rare classes such as bone count as much as air).

    Example:
        >>> SegmenterConfig(width=4).build().__class__.__name__
        'TinyUNet'
    """

    width: int = Field(8, ge=1)
    levels: int = Field(3, ge=1, le=6)
    n_classes: int = Field(4, ge=2)
    steps: int = Field(200, ge=0)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    patch_size: int | None = Field(64, ge=8, description="square patches; None = whole images")
    balanced: bool = False

    def build(self) -> TinyUNet:
        """A fresh net (initialised from the global RNG)."""
        return TinyUNet(1, self.n_classes, self.width, self.levels)


@dataclass
class SegmenterResult:
    """The pre-trained ``model`` (eval mode) and the loss of every step."""

    model: TinyUNet
    losses: list[float]


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean (optionally class-weighted) cross-entropy of logits (N, C, H, W) against labels
    (N, H, W); equals ``F.cross_entropy(logits, labels, weight)``.

    Example:
        >>> import torch
        >>> logits = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
        >>> labels = torch.randint(0, 4, (2, 5, 5), generator=torch.Generator().manual_seed(1))
        >>> bool(torch.isclose(segmentation_loss(logits, labels),
        ...                    torch.nn.functional.cross_entropy(logits, labels)))
        True
    """
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    if weight is not None:
        onehot = onehot * weight.to(logits).view(1, -1, 1, 1)
    nll = -(F.log_softmax(logits, dim=1) * onehot).sum(dim=1)
    return nll.sum() / onehot.sum()


def _balanced_weight(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels.flatten().cpu(), minlength=n_classes)[:n_classes].double()
    present = counts > 0
    weight = torch.zeros(n_classes, dtype=torch.float64)
    weight[present] = counts.sum() / (present.sum() * counts[present])
    return weight.float()


def _crops(
    images: torch.Tensor, labels: torch.Tensor, size: int | None, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    n, _, h, w = images.shape
    idx = torch.randint(0, n, (batch,), generator=gen)
    if size is None:
        return images[idx], labels[idx]
    ys = torch.randint(0, h - size + 1, (batch,), generator=gen).tolist()
    xs = torch.randint(0, w - size + 1, (batch,), generator=gen).tolist()
    where = list(zip(idx.tolist(), ys, xs, strict=True))
    x = torch.stack([images[i, :, y : y + size, x0 : x0 + size] for i, y, x0 in where])
    t = torch.stack([labels[i, y : y + size, x0 : x0 + size] for i, y, x0 in where])
    return x, t


def train_segmenter(
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int | None = None,
    seed: int = 0,
    *,
    cfg: SegmenterConfig | None = None,
    device: str | torch.device = "cpu",
) -> SegmenterResult:
    """Pre-train a :class:`TinyUNet` on ``images`` (N, 1, H, W) and ``labels`` (N, H, W).

    Args:
        images: inputs, e.g. HQ slices in [0, 1].
        labels: int64 class of every pixel, in ``0 .. cfg.n_classes - 1``.
        steps: optimisation steps (default ``cfg.steps``).
        seed: seeds the initialisation (global RNG forked and restored) and the patches.
        cfg: the net and its training; default :class:`SegmenterConfig`.
        device: where to train; the model stays there.

    Example:
        >>> import torch
        >>> x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> res = train_segmenter(x, (x[:, 0] > 0.5).long(), steps=3,
        ...                       cfg=SegmenterConfig(width=4, patch_size=None))
        >>> len(res.losses), res.model.training
        (3, False)
    """
    cfg = cfg or SegmenterConfig()
    n_steps = cfg.steps if steps is None else steps
    problems = []
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] == 0:
        problems.append(f"images must be non-empty (N, 1, H, W), got {tuple(images.shape)}")
    elif labels.shape != (images.shape[0], *images.shape[2:]):
        problems.append(f"labels {tuple(labels.shape)} must be (N, H, W) of images")
    elif int(labels.min()) < 0 or int(labels.max()) >= cfg.n_classes:
        problems.append(f"labels must lie in 0..{cfg.n_classes - 1}")
    if cfg.patch_size is not None and images.ndim == 4 and cfg.patch_size > min(images.shape[2:]):
        problems.append(f"patch_size {cfg.patch_size} exceeds the images {tuple(images.shape)}")
    if problems:
        raise ValueError("train_segmenter: " + "; ".join(problems))
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cfg.build().to(dev)
    weight = _balanced_weight(labels, cfg.n_classes).to(dev) if cfg.balanced else None
    images = images.detach().float().to(dev)
    labels = labels.detach().long().to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    losses: list[float] = []
    model.train()
    for _ in range(n_steps):
        x, t = _crops(images, labels, cfg.patch_size, cfg.batch_size, gen)
        loss = segmentation_loss(model(x), t, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"segmenter loss became {losses[-1]}; lower cfg.lr")
    model.eval()
    if losses:
        logger.info("pre-trained segmenter: %d steps, final loss %.4f", n_steps, losses[-1])
    return SegmenterResult(model, losses)


def segment(model: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Arg-max class of every pixel, (N, H, W) int64 on the CPU (no grad; mode restored).

    Example:
        >>> import torch
        >>> segment(TinyUNet(width=2), torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 8, 8])
    """
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(dev, torch.float32)
                out.append(model(batch).argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Dice ``2|P∩T| / (|P| + |T|)`` of each class pooled over all pixels of all images,
    float64 (n_classes,); NaN for a class absent from both.

    Example:
        >>> import torch
        >>> dice_per_class(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]), 3).tolist()
        [0.6666666666666666, 0.6666666666666666, nan]
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    p = F.one_hot(pred.flatten().long().cpu(), n_classes).double()
    t = F.one_hot(target.flatten().long().cpu(), n_classes).double()
    inter = (p * t).sum(0)
    total = p.sum(0) + t.sum(0)
    return torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.nan)
