"""Trajectory matching for enhancement nets (MTT, Cazenavette et al. 2022; DATM, Guo et al. 2024).

At the site, :func:`expert_trajectories` trains a few matching nets on one patient's real
(LQ, HQ) patches with plain SGD and keeps their parameters every ``steps_per_checkpoint``
steps: the *expert trajectories*. Matching then asks that ``syn_steps`` differentiable SGD
steps on the *synthetic* pairs, started from an expert checkpoint ``t``, land near the expert's
checkpoint ``t + span`` (:func:`trajectory_loss`, the normalised parameter distance of MTT)::

    L = || theta_student - theta_{t+span} ||^2 / || theta_t - theta_{t+span} ||^2

so the synthetic pairs teach the net what the real ones taught it over a whole segment of
training, not only the gradient of one step. DATM's observation (match early segments at a
small budget, later ones as the budget grows) sets the default start window
(:func:`start_window`).

The real slices enter only through the expert trajectories, which are not clipped or noised:
trajectory matching has no DP guarantee here, and ``dp.enabled`` with ``matching.objective``
``tm`` is refused (see :class:`~medidd.distill.config.DistillConfig`).

Example:
    >>> import torch
    >>> from medidd.distill.config import TrajectoryConfig
    >>> cfg = TrajectoryConfig(experts=1, checkpoints=3, steps_per_checkpoint=2)
    >>> real = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> noisy = lambda x, seed: x + 0.05 * torch.randn(
    ...     x.shape, generator=torch.Generator().manual_seed(seed))
    >>> trajs = expert_trajectories(["plain"], 8, 3, real, noisy, cfg, patch=8, batch=4,
    ...                             seed=0, device=torch.device("cpu"))
    >>> len(trajs), len(trajs[0].checkpoints)
    (1, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from medidd.distill.base import Degrade
from medidd.distill.config import TrajectoryConfig
from medidd.distill.matching import fresh_matching_net, pair_loss, random_patches
from medidd.seeds import derive


@dataclass(frozen=True)
class Trajectory:
    """One expert's saved parameters (checkpoint 0 is the initialisation) for net ``name``."""

    name: str
    net: nn.Module  # the architecture (its own parameters are not used by the student)
    checkpoints: list[dict[str, torch.Tensor]]


def expert_trajectories(
    names: list[str],
    width: int,
    depth: int,
    real: torch.Tensor,
    degrade: Degrade,
    cfg: TrajectoryConfig,
    *,
    patch: int,
    batch: int,
    seed: int,
    device: torch.device,
) -> list[Trajectory]:
    """``cfg.experts`` trajectories per architecture in ``names`` on the real HQ ``real``
    (LQ re-drawn by ``degrade`` every step, as the aggregator's training re-draws it)."""
    out = []
    g = torch.Generator().manual_seed(derive(seed, "experts"))
    for name in names:
        for e in range(cfg.experts):
            net = fresh_matching_net(width, depth, derive(seed, "expert", name, e), device, name)
            opt = torch.optim.SGD(net.parameters(), lr=cfg.expert_lr)
            ckpts = [_snapshot(net)]
            step = 0
            for _ in range(cfg.checkpoints):
                for _ in range(cfg.steps_per_checkpoint):
                    with torch.no_grad():
                        (hq,) = random_patches([real], batch, patch, g)
                        lq = degrade(hq, derive(seed, "expert-lq", name, e, step))
                    opt.zero_grad(set_to_none=True)
                    pair_loss(net, lq, hq).backward()
                    opt.step()
                    step += 1
                ckpts.append(_snapshot(net))
            out.append(Trajectory(name, net, ckpts))
    return out


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def start_window(cfg: TrajectoryConfig, ipc: int) -> tuple[int, int]:
    """The checkpoints a segment may start from, both included.

    ``cfg.start`` when given; otherwise DATM's rule: early segments for a small budget, later
    ones as ``ipc`` grows (upper bound ``1 + ipc``, lower bound ``ipc // 2``).

    Example:
        >>> from medidd.distill.config import TrajectoryConfig
        >>> start_window(TrajectoryConfig(checkpoints=10, span=2), 2)
        (1, 3)
        >>> start_window(TrajectoryConfig(checkpoints=10, span=2, start=(0, 5)), 2)
        (0, 5)
    """
    last = cfg.checkpoints - cfg.span
    if cfg.start is not None:
        return min(cfg.start[0], last), min(cfg.start[1], last)
    hi = min(1 + ipc, last)
    return min(ipc // 2, hi), hi


def trajectory_loss(
    traj: Trajectory,
    start: int,
    span: int,
    syn_hq: torch.Tensor,
    syn_lq: torch.Tensor,
    lr: torch.Tensor,
    steps: int,
    patches: int,
    patch: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """MTT's normalised parameter distance after ``steps`` SGD steps (learning rate ``lr``,
    differentiable) on random patches of the synthetic pairs, from checkpoint ``start`` of
    ``traj`` to its checkpoint ``start + span`` (differentiable in ``syn_*`` and ``lr``)."""
    begin = traj.checkpoints[start]
    target = traj.checkpoints[start + span]
    params = {k: v.clone().requires_grad_(True) for k, v in begin.items()}
    for _ in range(steps):
        hq_p, lq_p = random_patches([syn_hq, syn_lq], patches, patch, generator)
        loss = nn.functional.mse_loss(functional_call(traj.net, params, (lq_p,)), hq_p)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {k: p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
    num = torch.stack([((params[k] - target[k]) ** 2).sum() for k in params]).sum()
    den = torch.stack([((begin[k] - target[k]) ** 2).sum() for k in params]).sum()
    return num / (den + 1e-12)
