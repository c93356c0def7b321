"""The per-step update of the downstream trainer, as a small replaceable object.

The trainer owns data, sampling, schedule and bookkeeping; a :class:`StepRule` owns what happens
between "here is a batch" and "the weights moved": forward, loss, gradients, optimiser step. A
task-driven rule (e.g. GradProm: add an auxiliary segmentation gradient only when its cosine
with the enhancement gradient is positive) is a subclass registered in :data:`STEP_RULES`, chosen
by ``TrainConfig.step_rule`` with its ``step_options``; the trainer does not change.

Example:
    >>> import torch
    >>> model = torch.nn.Conv2d(1, 1, 3, padding=1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> rule = build_step_rule("none")
    >>> x = torch.zeros(2, 1, 8, 8)
    >>> out = rule.step(model, opt, x, x, torch.nn.functional.l1_loss)
    >>> sorted(out.metrics)
    []
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from medidd.lookup import look_up_option
from medidd.train.losses import LossFn


@dataclass
class StepOutput:
    """What one step reports: the enhancement loss before the update and named extras
    (e.g. ``{"cos": 0.3, "aligned": 1.0}`` for GradProm), collected per step by the trainer."""

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


class StepRule:
    """Plain supervised step (``step_rule: none``): ``loss(model(lq), hq)``, backward, step.

    Subclasses override :meth:`step` (and :meth:`bind` to build their own state, e.g. an
    auxiliary network and its optimiser, on the training device). Any randomness inside a rule
    should come from the global RNG, which the trainer seeds and restores around training, or a
    generator seeded in :meth:`bind`.
    """

    name: ClassVar[str] = "none"

    def bind(self, model: nn.Module, device: torch.device, seed: int) -> None:
        """Called once before the first step with the model (already on ``device``)."""

    def forward_loss(
        self, model: nn.Module, lq: torch.Tensor, hq: torch.Tensor, loss_fn: LossFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(enhanced, enhancement loss)`` for the batch, with the graph kept."""
        enhanced = model(lq)
        return enhanced, loss_fn(enhanced, hq)

    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lq: torch.Tensor,
        hq: torch.Tensor,
        loss_fn: LossFn,
    ) -> StepOutput:
        """One update of ``model`` on the batch ``(lq, hq)``; returns the loss before it."""
        optimizer.zero_grad(set_to_none=True)
        _, loss = self.forward_loss(model, lq, hq, loss_fn)
        loss.backward()
        optimizer.step()
        return StepOutput(loss=float(loss.detach()))


STEP_RULES: dict[str, Callable[..., StepRule]] = {
    "none": StepRule,
}


def build_step_rule(name: str, **options: Any) -> StepRule:
    """A fresh rule called ``name`` built with ``options`` (its constructor's arguments).

    Example:
        >>> build_step_rule("none").name
        'none'
    """
    key = look_up_option(name, STEP_RULES, what="step rule")
    return STEP_RULES[key](**options)
