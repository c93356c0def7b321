"""Differential privacy for gradient matching: noisy, clipped real-side gradients + accounting.

Inside patient-aware gradient matching the synthetic images only ever see the gradient of the
matching network on the patient's *real* batch. Making that gradient differentially private
(DP-SGD's Gaussian mechanism) makes the distilled output DP by post-processing:

1. Poisson sampling: each of the patient's N slices joins the real batch independently with
   probability q (``sample_rate``), from a seeded ``torch.Generator`` (as Opacus's
   ``UniformWithReplacementSampler``); the batch size varies, and may be 0.
2. per-sample gradients of the loss (Opacus ``GradSampleModule``; layers without an Opacus
   grad sampler fall back to its functorch path);
3. each sample's gradient, all parameters together, is clipped to L2 norm ``max_grad_norm`` (C);
4. the clipped gradients are summed, Gaussian noise N(0, (sigma C)^2) is added to every
   coordinate, and the result is divided by the *expected* batch size q N.

The privacy unit is one slice: when several patches of one slice enter a step, their gradients
are averaged before clipping (pass inputs shaped (B, P, C, h, w)). Epsilon is accounted with the
RDP accountant, chosen explicitly (``get_noise_multiplier`` and ``make_private_with_epsilon``
are not RDP everywhere in Opacus). Noise comes from torch's PRNG (as Opacus with
``secure_mode=False``): fine for research and audits, not hardened against floating-point
attacks.

Opacus is imported only when used (``pip install 'medidd[dp]'``).

Example:
    >>> sigma = noise_multiplier_for(epsilon=8.0, delta=1e-5, sample_rate=0.1, steps=200)
    >>> abs(epsilon_spent(sigma, 0.1, 200, 1e-5) - 8.0) < 0.08
    True
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from medidd.config import StrictModel
from medidd.lookup import look_up_option
from medidd.optional import optional_import

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp",)
LOSSES = ("mse", "l1")
Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DPConfig(StrictModel):
    """``dp:`` section of a distillation config. Privacy unit = one slice, per patient."""

    enabled: bool = False
    epsilon: float = Field(8.0, gt=0, description="target epsilon per patient")
    delta: float = Field(1e-5, gt=0, lt=1, description="target delta (below 1 / slices)")
    max_grad_norm: float = Field(1.0, gt=0, description="per-slice clipping norm C")
    accountant: Literal["rdp"] = "rdp"


# --------------------------------------------------------------------------- accounting


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps, by Opacus's RDP accountant.

    Example:
        >>> round(epsilon_spent(1.0, 0.01, 1000, 1e-5), 2)
        2.1
    """
    _check_rate(sample_rate, steps)
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if steps == 0:
        return 0.0
    rdp = optional_import("opacus.accountants", extra="dp")
    accountant = rdp.RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(accountant.get_epsilon(delta=delta))


def noise_multiplier_for(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """Smallest noise multiplier sigma whose RDP epsilon after ``steps`` is <= ``epsilon``.

    Binary search by ``opacus.accountants.utils.get_noise_multiplier`` with the RDP accountant
    passed explicitly and a relative tolerance of 0.1% on epsilon.

    Example:
        >>> round(noise_multiplier_for(2.1, 1e-5, 0.01, 1000), 2)
        1.0
    """
    look_up_option(accountant, ACCOUNTANTS, what="privacy accountant")
    _check_rate(sample_rate, steps)
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, got {epsilon} and {delta}")
    utils = optional_import("opacus.accountants.utils", extra="dp")
    with warnings.catch_warnings():
        # the search brackets sigma with huge values, where the optimal RDP order is the largest
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        sigma = utils.get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=1e-3 * epsilon,
        )
    return float(sigma)


def _check_rate(sample_rate: float, steps: int) -> None:
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")


# --------------------------------------------------------------------------- model checks


def validate_model(model: nn.Module) -> None:
    """Raise ``ValueError`` naming every layer Opacus cannot give per-sample gradients for
    (BatchNorm and the others in ``opacus.validators``), with Opacus's reason.

    Example:
        >>> validate_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: matching network not usable under DP: layer '1' (BatchNorm2d): BatchNorm ...
    """
    validators = optional_import("opacus.validators", extra="dp")
    registry = validators.ModuleValidator.VALIDATORS
    problems = []
    for name, module in model.named_modules():
        check = registry.get(type(module))
        if check is None:
            continue
        for error in check(module):
            reason = str(error).split(". ")[0]
            problems.append(f"layer '{name or '<root>'}' ({type(module).__name__}): {reason}")
    if problems:
        raise ValueError(
            "matching network not usable under DP: "
            + "; ".join(problems)
            + ". Use GroupNorm/InstanceNorm without running stats (or no normalisation)."
        )


# --------------------------------------------------------------------------- gradients


def _per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    diff = (pred - target).flatten(1)
    return diff.pow(2).mean(dim=1) if loss == "mse" else diff.abs().mean(dim=1)


def per_sample_gradients(
    model: nn.Module, lq: torch.Tensor, hq: torch.Tensor, loss: str = "mse"
) -> list[torch.Tensor]:
    """Per-sample gradients of ``loss(model(lq_i), hq_i)`` with Opacus ``GradSampleModule``.

    Args:
        model: the matching network (validated with :func:`validate_model`); its ``.grad``
            fields and hooks are left as they were.
        lq, hq: (B, C, h, w) pairs, or (B, P, C, h, w) for P patches per sample; a sample's loss
            is then the mean of its patches' losses.
        loss: "mse" or "l1", averaged over pixels.

    Returns:
        One (B, *param.shape) tensor per trainable parameter, detached.
    """
    loss = look_up_option(loss, LOSSES, what="loss")
    validate_model(model)
    if lq.shape[0] != hq.shape[0]:
        raise ValueError(f"lq has {lq.shape[0]} samples but hq has {hq.shape[0]}")
    b = lq.shape[0]
    patches = 1
    if lq.ndim == 5:
        patches = lq.shape[1]
        lq, hq = lq.flatten(0, 1), hq.flatten(0, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    if b == 0:
        return [torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device) for p in params]
    grad_sample = optional_import("opacus.grad_sample", extra="dp")
    gsm = grad_sample.GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    try:
        with warnings.catch_warnings():
            # the first layer's input does not require grad; the hook still sees the outputs
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            per = _per_sample_loss(gsm(lq), hq, loss)
            torch.autograd.grad(per.sum(), params)
        grads = [p.grad_sample.detach() for p in params]  # type: ignore[attr-defined]
    finally:
        gsm.to_standard_module()
    if patches > 1:
        grads = [g.reshape(b, patches, *g.shape[1:]).mean(dim=1) for g in grads]
    return grads


def clip_per_sample(grads: Sequence[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
    """Scale each sample's gradient (all parameters together) to L2 norm <= ``max_grad_norm``.

    Uses Opacus's factor ``min(1, C / (norm + 1e-6))``.

    Example:
        >>> g = [torch.tensor([[3.0, 4.0], [0.3, 0.4]])]
        >>> clip_per_sample(g, 1.0)[0].norm(dim=1).round(decimals=4).tolist()
        [1.0, 0.5]
    """
    if max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    if not grads:
        return []
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], dim=1).norm(dim=1)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return [g * factor.view(-1, *([1] * (g.ndim - 1))).to(g) for g in grads]


def noisy_clipped_gradients(
    model: nn.Module,
    lq: torch.Tensor,
    hq: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator,
    loss: str = "mse",
) -> list[torch.Tensor]:
    """One DP-SGD gradient of the real batch: clip per sample, sum, add N(0, (sigma C)^2),
    divide by the expected batch size.

    Args:
        model: the matching network (no BatchNorm).
        lq, hq: the Poisson-sampled real batch (see :func:`per_sample_gradients` for shapes).
        max_grad_norm: clipping norm C.
        noise_multiplier: sigma (see :func:`noise_multiplier_for`).
        expected_batch_size: q N, the divisor (as Opacus with ``loss_reduction="mean"``).
        generator: seeded generator for the noise, on the parameters' device.
        loss: "mse" or "l1".

    Returns:
        One detached tensor per trainable parameter, shaped like the parameter.
    """
    if expected_batch_size <= 0:
        raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    clipped = clip_per_sample(per_sample_gradients(model, lq, hq, loss), max_grad_norm)
    std = noise_multiplier * max_grad_norm
    out = []
    for g in clipped:
        noise = torch.normal(
            0.0, std, size=g.shape[1:], generator=generator, device=g.device, dtype=g.dtype
        )
        out.append(((g.sum(dim=0) + noise) / expected_batch_size).detach())
    return out


def poisson_sample(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each of ``n`` items kept with probability q.

    Example:
        >>> idx = poisson_sample(1000, 0.1, torch.Generator().manual_seed(0))
        >>> 50 < len(idx) < 150
        True
    """
    _check_rate(sample_rate, 0)
    mask = torch.rand(n, generator=generator, device=generator.device) < sample_rate
    return mask.nonzero().flatten()


class DPGradientSource:
    """Noisy real-side gradients of one patient's slices, with their own privacy accounting.

    Each :meth:`step` Poisson-samples the slices, optionally turns each sampled slice into
    patches (``transform``), and returns the DP gradient of the matching network; the number of
    steps is counted so :meth:`epsilon` is the patient's spent budget.

    Args:
        lq, hq: (N, C, H, W) all real pairs of the patient (one row = one slice).
        noise_multiplier: sigma.
        max_grad_norm: clipping norm C.
        sample_rate: q, the probability of each slice entering a step.
        generator: seeded ``torch.Generator`` for sampling and noise.
        transform: optional ``f(lq_batch, hq_batch) -> (lq, hq)`` applied to the sampled slices
            (e.g. random patches); it must keep one row per slice (shape (B, ...) or
            (B, P, C, h, w)), so the privacy unit stays one slice.
        loss: "mse" or "l1".

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(20, 1, 8, 8, generator=g)
        >>> src = DPGradientSource(x, x, noise_multiplier=1.0, max_grad_norm=1.0,
        ...                        sample_rate=0.25, generator=g)
        >>> grads = src.step(nn.Conv2d(1, 1, 3, padding=1))
        >>> [tuple(t.shape) for t in grads], src.steps
        ([(1, 1, 3, 3), (1,)], 1)
    """

    def __init__(
        self,
        lq: torch.Tensor,
        hq: torch.Tensor,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        sample_rate: float,
        generator: torch.Generator,
        transform: Transform | None = None,
        loss: str = "mse",
    ) -> None:
        if lq.shape[0] != hq.shape[0] or lq.shape[0] == 0:
            raise ValueError(f"need the same, non-zero number of lq ({lq.shape[0]}) and hq rows")
        _check_rate(sample_rate, 0)
        self.lq, self.hq = lq, hq
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.sample_rate = float(sample_rate)
        self.generator = generator
        self.transform = transform
        self.loss = look_up_option(loss, LOSSES, what="loss")
        self.steps = 0

    @property
    def expected_batch_size(self) -> float:
        """q N: the divisor of every noisy gradient."""
        return self.sample_rate * self.lq.shape[0]

    def step(self, model: nn.Module) -> list[torch.Tensor]:
        """Sample a batch, return the noisy per-parameter gradients (detached), count the step."""
        idx = poisson_sample(self.lq.shape[0], self.sample_rate, self.generator).to(self.lq.device)
        lq, hq = self.lq[idx], self.hq[idx]
        if self.transform is not None:
            lq, hq = self.transform(lq, hq)
            if lq.shape[0] != len(idx):
                raise ValueError("transform must keep one row per sampled slice")
        device = next(model.parameters()).device
        grads = noisy_clipped_gradients(
            model,
            lq.to(device),
            hq.to(device),
            max_grad_norm=self.max_grad_norm,
            noise_multiplier=self.noise_multiplier,
            expected_batch_size=self.expected_batch_size,
            generator=self.generator,
            loss=self.loss,
        )
        self.steps += 1
        return grads

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far by this patient's slices (RDP accountant)."""
        return epsilon_spent(self.noise_multiplier, self.sample_rate, self.steps, delta)
