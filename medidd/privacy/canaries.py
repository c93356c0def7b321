"""What distillation sets aside so that the site's audit can say yes or no.

Two things, both decided *before* distillation, both re-derived by the audit from the site's own
slices and the package's recorded config (nothing extra is stored or shipped):

- **Held-out slabs** (matched non-members): every patient's slices are cut into slabs of
  ``slab`` slices; one slab in every ``period`` is never given to the distiller, and ``gap``
  slices on each side of it are dropped from both sides. Members (the distilled slabs) and
  non-members (the held-out slabs) are then the same patients, scanner, protocol and region:
  only membership separates them, so an attack that separates them reads membership, not
  anatomy. A patient with fewer than ``min_slices`` slices is distilled whole (no slab).
- **Canaries** for the one-run audit (:mod:`medidd.privacy.mia.onerun`): ``canaries``
  member slices each carry, by an independent fair coin, a unique faint chequerboard code
  (``canary_size`` px square of ``canary_cell`` px cells, +- ``canary_amplitude`` of the
  window) at a tissue location. Only the included codes reach the distiller; if the package's
  images, or a model trained on them, carry the included codes more than the excluded ones,
  the package leaks slice-level detail, and the count of right guesses bounds its epsilon
  from below. The codes are synthetic (no patient information); a code that is shipped is
  the finding, not a leak of a patient.

Example:
    >>> import torch
    >>> from medidd.preprocess.slices import SliceSet
    >>> s = SliceSet(torch.full((40, 1, 32, 32), 0.5), torch.linspace(0, 1, 40), "p-00000000000a",
    ...              "CT", (-1000.0, 1000.0))
    >>> cfg = AuditDataConfig(canaries=4, canary_size=8)  # default: up to 64 canaries
    >>> prep = prepare_site([s], cfg, seed=0)
    >>> len(prep.members[0]), len(prep.holdout[0]), len(prep.canaries)
    (28, 8, 4)
    >>> slab_roles(20, cfg).tolist()[:12]
    [1, 1, 1, 1, 1, 1, 1, -1, 0, 0, 0, 0]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from medidd.config import StrictModel
from medidd.preprocess.slices import SliceSet
from medidd.privacy.memorisation import ncc_map
from medidd.seeds import derive

#: canaries of ``canaries: auto`` (fewer at a site with fewer than twice as many member slices)
AUTO_CANARIES = 64

#: local-mean window of the image test's high-pass filter (px)
HIGHPASS = 5

__all__ = ["AuditDataConfig", "Canary", "SitePrep", "canary_image_scores", "holdout_key",
           "prepare_site", "slab_roles"]


class AuditDataConfig(StrictModel):
    """The ``audit`` section of the distillation config (see the module docstring)."""

    holdout: Literal["slabs", "none"] = "slabs"
    slab: int = Field(4, ge=1, description="slices per slab")
    gap: int = Field(1, ge=0, description="slices dropped on each side of a held-out slab")
    period: int = Field(4, ge=2, description="one held-out slab in every `period` slabs")
    min_slices: int = Field(16, ge=4, description="fewer slices: distilled whole, no slab")
    canaries: int | Literal["auto"] = Field(
        "auto", description=f"canary slices at the site (0 = none; auto = up to {AUTO_CANARIES},"
        " at most half of the member slices)")
    canary_size: int = Field(16, ge=4)
    canary_cell: int = Field(2, ge=1)
    canary_amplitude: float = Field(0.08, gt=0, le=0.5, description="fraction of the window")

    @model_validator(mode="after")
    def _cells(self) -> AuditDataConfig:
        if isinstance(self.canaries, int) and self.canaries < 0:
            raise ValueError(f"audit.canaries must be >= 0 or 'auto', got {self.canaries}")
        if self.canary_size % self.canary_cell:
            raise ValueError(f"audit.canary_size ({self.canary_size}) must be a multiple of "
                             f"audit.canary_cell ({self.canary_cell})")
        return self


def holdout_key(patient_key: str) -> str:
    """The pseudonym of a patient's held-out slabs (derived from the patient's, so the audit's
    patient-level bookkeeping treats the slabs as their own unit).

    Example:
        >>> holdout_key("p-0123456789ab") != "p-0123456789ab", len(holdout_key("p-0123456789ab"))
        (True, 14)
    """
    return "p-" + hashlib.sha256(f"{patient_key}:held-out-slabs".encode()).hexdigest()[:12]


def slab_roles(n: int, cfg: AuditDataConfig) -> np.ndarray:
    """Role of each of ``n`` slices: 1 distilled (member), 0 held out, -1 dropped (gap).

    The held-out slab is the middle one of every ``period`` (so both ends of a volume are
    members); every slice is a member when ``holdout`` is ``none`` or ``n < min_slices``.
    """
    roles = np.ones(n, dtype=np.int8)
    if cfg.holdout == "none" or n < cfg.min_slices:
        return roles
    slab = np.arange(n) // cfg.slab
    held = slab % cfg.period == cfg.period // 2
    roles[held] = 0
    idx = np.flatnonzero(held)
    for d in range(1, cfg.gap + 1):
        for near in (idx - d, idx + d):
            ok = near[(near >= 0) & (near < n)]
            roles[ok[roles[ok] == 1]] = -1
    return roles


@dataclass(frozen=True)
class Canary:
    """One canary: which member slice (``index`` into the patient's *member* slices), where
    (``y``, ``x``, square of ``code.shape``), its +-1 ``code`` and whether the coin included it."""

    patient_key: str
    index: int
    y: int
    x: int
    code: torch.Tensor
    included: bool


@dataclass
class SitePrep:
    """The site split for distillation and audit: ``distill`` (member slices, included canaries
    planted), ``members`` (the same slices, clean), ``holdout`` (held-out slabs under
    :func:`holdout_key`; empty sets are dropped) and every canary."""

    distill: list[SliceSet]
    members: list[SliceSet]
    holdout: list[SliceSet]
    canaries: list[Canary] = field(default_factory=list)

    @property
    def holdout_of(self) -> dict[str, str]:
        """Held-out unit key -> the member patient it was cut from."""
        return {holdout_key(m.patient_key): m.patient_key for m in self.members}


def _subset(s: SliceSet, keep: np.ndarray, key: str | None = None) -> SliceSet:
    index = torch.from_numpy(np.flatnonzero(keep))
    return SliceSet(s.images[index], s.z[index], key or s.patient_key, s.modality, s.window)


def _location(img: torch.Tensor, size: int, gen: torch.Generator, amp: float) -> tuple[int, int]:
    """A square of tissue (mean well inside the window) for the code, else the centre."""
    h, w = img.shape[-2:]
    for _ in range(32):
        y = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        mean = float(img[..., y : y + size, x : x + size].mean())
        if 2 * amp < mean < 1 - 2 * amp:
            return y, x
    return (h - size) // 2, (w - size) // 2


def _plan(counts: Sequence[int], wanted: int | str) -> list[int]:
    """Canaries per patient: proportional to member slices, at most half of each patient's."""
    caps = [c // 2 for c in counts]
    m = min(AUTO_CANARIES, sum(caps)) if wanted == "auto" else int(wanted)
    if m > sum(caps):
        raise ValueError(f"audit.canaries={wanted} is more than the site allows ({sum(caps)}: "
                         "half of the member slices); lower audit.canaries")
    total = max(sum(counts), 1)
    plan = [min(cap, int(m * c / total)) for c, cap in zip(counts, caps, strict=True)]
    order = np.argsort(-np.asarray(counts), kind="stable")
    i = 0
    while sum(plan) < m:
        p = int(order[i % len(order)])
        if plan[p] < caps[p]:
            plan[p] += 1
        i += 1
    return plan


def prepare_site(cohort: Sequence[SliceSet], cfg: AuditDataConfig, seed: int) -> SitePrep:
    """Split every patient into member slices and held-out slabs and plant the canaries
    (deterministic in ``seed`` and the patient keys: the audit recomputes the same split).

    Raises:
        ValueError: more canaries than the site allows (half of the member slices), or a
            canary larger than the slices.
    """
    members, holdout = [], []
    for s in cohort:
        roles = slab_roles(len(s), cfg)
        members.append(_subset(s, roles == 1))
        if (roles == 0).any():
            holdout.append(_subset(s, roles == 0, holdout_key(s.patient_key)))
    if cfg.canaries == 0 or not members:
        return SitePrep(list(members), members, holdout)
    if members and cfg.canary_size > members[0].size:
        raise ValueError(f"audit.canary_size={cfg.canary_size} is larger than the "
                         f"{members[0].size} px slices; lower audit.canary_size")
    plan = _plan([len(s) for s in members], cfg.canaries)
    distill, canaries = [], []
    reps = cfg.canary_size // cfg.canary_cell
    for s, k in zip(members, plan, strict=True):
        images = s.images.clone()
        gen = torch.Generator().manual_seed(derive(seed, "canary", s.patient_key))
        for index in torch.linspace(0, len(s) - 1, k + 2)[1:-1].round().long().tolist():
            code = (torch.randint(0, 2, (reps, reps), generator=gen).float() * 2 - 1)
            code = code.repeat_interleave(cfg.canary_cell, 0).repeat_interleave(cfg.canary_cell, 1)
            y, x = _location(images[index], cfg.canary_size, gen, cfg.canary_amplitude)
            included = bool(torch.randint(0, 2, (1,), generator=gen))
            canaries.append(Canary(s.patient_key, int(index), y, x, code, included))
            if included:
                region = images[index, 0, y : y + cfg.canary_size, x : x + cfg.canary_size]
                region.add_(cfg.canary_amplitude * code).clamp_(0.0, 1.0)
        distill.append(SliceSet(images, s.z, s.patient_key, s.modality, s.window))
    return SitePrep(distill, members, holdout, canaries)


def highpass(images: torch.Tensor, k: int = HIGHPASS) -> torch.Tensor:
    """``images`` minus their ``k`` x ``k`` local mean (reflect-padded): the smooth anatomy
    goes, a code of small cells stays.

    Example:
        >>> import torch
        >>> float(highpass(torch.full((1, 1, 8, 8), 0.7)).abs().max()) < 1e-6
        True
    """
    x = images.float()
    pad = k // 2
    blur = torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect"), k, stride=1)
    return x - blur


def _square(images: torch.Tensor, c: Canary) -> torch.Tensor:
    n = c.code.shape[0]
    return images[:, 0, c.y : c.y + n, c.x : c.x + n].reshape(images.shape[0], -1).double()


def _unit(rows: torch.Tensor) -> torch.Tensor:
    rows = rows - rows.mean(dim=-1, keepdim=True)
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _template(c: Canary, shape: tuple[int, int]) -> torch.Tensor:
    """The code as the high-pass filter sees it in place (the matched filter)."""
    canvas = torch.zeros(1, 1, *shape)
    n = c.code.shape[0]
    canvas[0, 0, c.y : c.y + n, c.x : c.x + n] = c.code
    return _unit(_square(highpass(canvas), c))[0]


def canary_image_scores(images: torch.Tensor, canaries: Sequence[Canary], *,
                        sliding: bool = False) -> np.ndarray:
    """For each canary, the highest correlation of its code with the same square of any of
    ``images`` (N, 1, H, W), both high-passed (:func:`highpass`, so smooth anatomy does not
    count): high when an image carries the code (the package copied the slice's detail), about
    ``canary_cell / canary_size`` times a Gaussian maximum otherwise. ``sliding``: the images
    are patches cut anywhere from slices (patch packages), so every square of them counts.

    Example:
        >>> import torch
        >>> code = torch.ones(4, 4); code[:, :2] = -1
        >>> c = Canary("p-1", 0, 2, 2, code, True)
        >>> img = torch.full((2, 1, 8, 8), 0.5); img[1, 0, 2:6, 2:6] += 0.1 * code
        >>> canary_image_scores(img, [c]).round(2).tolist()
        [1.0]
        >>> bool(canary_image_scores(img[:, :, 1:7, 1:7], [c], sliding=True)[0] > 0.95)
        True
    """
    if not canaries:
        return np.zeros(0)
    hp = highpass(images)
    if sliding:
        return np.asarray([float(ncc_map(_free_template(c), hp).max()) for c in canaries])
    shape = (images.shape[-2], images.shape[-1])
    return np.asarray([float((_unit(_square(hp, c)) @ _template(c, shape)).max())
                       for c in canaries])


def _free_template(c: Canary) -> torch.Tensor:
    """The high-passed code away from any border (for patches, whose offset is unknown)."""
    n = c.code.shape[0]
    canvas = torch.zeros(1, 1, n + 2 * HIGHPASS, n + 2 * HIGHPASS)
    canvas[0, 0, HIGHPASS : HIGHPASS + n, HIGHPASS : HIGHPASS + n] = c.code
    return highpass(canvas)[:, :, HIGHPASS : HIGHPASS + n, HIGHPASS : HIGHPASS + n]


def canary_residual_scores(outputs: torch.Tensor, clean: torch.Tensor,
                           canaries: Sequence[Canary]) -> np.ndarray:
    """For each canary ``i``, the correlation of its code with ``outputs[i] - clean[i]`` in its
    square: a model's output on the *clean* slice's LQ that carries the code (it hallucinates
    what it memorised). Rows of ``outputs``/``clean`` are in canary order.

    Example:
        >>> import torch
        >>> code = torch.ones(4, 4); code[:2] = -1
        >>> c = Canary("p-1", 0, 0, 0, code, True)
        >>> clean = torch.zeros(1, 1, 8, 8); out = clean.clone(); out[0, 0, :4, :4] += code
        >>> canary_residual_scores(out, clean, [c]).round(3).tolist()
        [1.0]
    """
    if not canaries:
        return np.zeros(0)
    diff = outputs.double() - clean.double()
    return np.asarray([float(_unit(_square(diff[i : i + 1], c))[0]
                             @ _unit(c.code.reshape(1, -1).double())[0])
                       for i, c in enumerate(canaries)])
