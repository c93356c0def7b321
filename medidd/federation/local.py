"""What a node does with its own real slices: score a model on held-out patients, and (FedAvg
baseline only) train on its raw slices. Only aggregates leave this module.

Held-out patients are, in this order of preference: the node's ``holdout`` folder; the node's
patients that are *not* in its package; otherwise every patient (reported as
``held_out = 0``: the score is then on patients the package was distilled from).

Example:
    >>> import torch
    >>> from medidd.nets import NetConfig
    >>> hq = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> noisy = lambda x, seed: (x + 0.05 * torch.randn(
    ...     x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
    >>> net = NetConfig(name="dncnn", width=4, depth=2)
    >>> m = score_state(net, net.build().state_dict(), hq, noisy, seed=0)
    >>> sorted(m)
    ['n_slices', 'psnr', 'psnr_lq', 'ssim', 'ssim_lq']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from medidd.degrade.draw import Degrade
from medidd.federation.node import NodeSettings
from medidd.nets import NetConfig
from medidd.package import Manifest
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.preprocess.slices import SliceSet
from medidd.train import TrainConfig, score_model, train_enhancer

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class LocalData:
    """A node's real slices: ``train`` (its package's patients, or all), ``holdout`` (scored),
    and whether the held-out patients are disjoint from the distilled / trained ones."""

    train: list[SliceSet]
    holdout: list[SliceSet]
    disjoint: bool


def default_salt_file() -> Path:
    """The site salt: ``$MEDIDD_HOME/salt`` (default ``~/.medidd/salt``), as medidd-node uses."""
    return Path(os.environ.get("MEDIDD_HOME", Path.home() / ".medidd")) / "salt"


def load_patients(folder: Path, preprocess: PreprocessConfig, settings: NodeSettings
                  ) -> list[SliceSet]:
    """Every usable patient under ``folder`` as slices: the site's ingestion and preprocessing
    (:func:`medidd.preprocess.cohort.prepare_patients`, cached in ``settings.cache_dir``) with
    the run's ``preprocess`` settings; patient keys use the site salt (``settings.salt_file``,
    default :func:`default_salt_file`) so they match the keys in the site's package."""
    from medidd.io.pseudonym import load_or_create_salt
    from medidd.preprocess.cohort import prepare_patients

    salt = load_or_create_salt(settings.salt_file or default_salt_file())
    prepared = prepare_patients(Path(folder), salt=salt, cfg=preprocess,
                                cache_dir=settings.cache_dir)
    if prepared.skipped:
        logger.info("%d inputs were not used (see medidd-node inspect)", len(prepared.skipped))
    return list(prepared.slices)


def split_local(patients: Sequence[SliceSet], holdout: Sequence[SliceSet] | None,
                manifest: Manifest | None) -> LocalData:
    """Decide which real slices are held out (see the module docstring).

    Example:
        >>> import torch
        >>> a = SliceSet(torch.zeros(1, 1, 8, 8), torch.zeros(1), "p-0123abcd", "CT", (0., 1.))
        >>> b = SliceSet(torch.zeros(1, 1, 8, 8), torch.zeros(1), "p-4567cdef", "CT", (0., 1.))
        >>> from medidd.package.manifest import example_manifest
        >>> m = example_manifest(patients=[{"key": "p-0123abcd", "n_images": 2, "start": 0,
        ...                                  "stop": 2}], n_images=2)
        >>> d = split_local([a, b], None, m)
        >>> [s.patient_key for s in d.holdout], d.disjoint
        (['p-4567cdef'], True)
    """
    patients = list(patients)
    if holdout:
        return LocalData(train=patients, holdout=list(holdout), disjoint=True)
    if manifest is not None:
        keys = {p.key for p in manifest.patients}
        members = [s for s in patients if s.patient_key in keys]
        others = [s for s in patients if s.patient_key not in keys]
        if others:
            return LocalData(train=members or patients, holdout=others, disjoint=True)
    return LocalData(train=patients, holdout=patients, disjoint=False)


def stack_slices(sets: Sequence[SliceSet], max_slices: int | None = None) -> torch.Tensor:
    """All slices of ``sets`` as one (N, 1, H, W) tensor, evenly thinned to ``max_slices``."""
    if not sets:
        raise ValueError("no slices: the node has no usable patients for this step")
    images = torch.cat([s.images for s in sets])
    if max_slices is not None and images.shape[0] > max_slices:
        idx = torch.linspace(0, images.shape[0] - 1, max_slices).round().long()
        images = images[idx]
    return images


def score_state(net: NetConfig, state: Mapping[str, torch.Tensor], hq: torch.Tensor,
                degrade: Degrade, *, seed: int, batch_size: int = 8) -> dict[str, float]:
    """Aggregate PSNR/SSIM of the net ``net`` with weights ``state`` on ``hq`` (and of the LQ
    input), LQ drawn by :func:`medidd.train.heldout_lq` with ``seed`` (the measurement path of
    the benchmarks): ``{"psnr", "ssim", "psnr_lq", "ssim_lq", "n_slices"}``; nothing per slice."""
    model = net.build()
    model.load_state_dict(dict(state))
    res = score_model(model, hq, degrade, eval_seed=seed, batch_size=batch_size)
    return {"psnr": res.psnr, "ssim": res.ssim, "psnr_lq": res.psnr_lq, "ssim_lq": res.ssim_lq,
            "n_slices": float(res.n)}


def train_local(cfg: TrainConfig, state: Mapping[str, torch.Tensor], hq: torch.Tensor,
                degrade: Degrade, *, steps: int, seed: int) -> tuple[dict[str, torch.Tensor], int]:
    """FedAvg local update: start from the global ``state``, ``steps`` steps (constant lr) on
    the node's raw ``hq`` slices with LQ re-drawn by ``degrade``; returns (new state, number
    of slices). Seeded and deterministic like :func:`~medidd.train.train_enhancer`."""
    local = cfg.model_copy(update={"steps": steps, "seed": seed, "schedule": "constant"})
    result = train_enhancer(hq, None, local, degrade=degrade, init_state=state)
    new = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    return new, int(hq.shape[0])
