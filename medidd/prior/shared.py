"""The shared anatomical prior that the hospital nodes build together: the maths and the file.

Per modality and body region (a *group*, ``CT:chest``), every node

1. bins each patient's slices by normalised axial position ``z`` into ``bins`` equal bins
   (:func:`bin_means`: the mean of the patient's slices in each bin, after an affine
   registration to the group's public template, :mod:`medidd.prior.contribution`);
2. area-downsamples each bin mean to ``release_size`` px and subtracts the public
   ``reference`` (zero, or the atlas), giving the patient's vector ``u_p`` of residuals;
3. clips ``u_p`` to L2 norm ``clip_norm`` over all its bins (:func:`clip_patient`) and adds
   ``count_weight`` to the count of each bin it has slices in, so one patient changes the
   node's vector of (sums, weighted counts) by at most
   ``sensitivity = sqrt(clip_norm^2 + count_weight^2 * bins)`` in L2 norm — whatever its
   number of slices: the **patient** is the privacy unit;
4. adds Gaussian noise of standard deviation ``noise_multiplier * sensitivity`` to every sum
   and weighted count (:func:`add_noise`), the noise multiplier calibrated to the target
   ``(epsilon, delta)`` of one release by Opacus' RDP accountant (:func:`noise_multiplier`);
   each node's noised sums are (epsilon, delta)-DP on their own, so the guarantee does not
   rest on the secure aggregation (which hides them from the server on top);
5. sends them through SecAgg+ (the Flower apps do that), so the server learns the sum.

The server divides (:func:`release`): ``prior = reference + S / n`` per bin, released only
when the noisy patient count ``n`` across sites reaches ``min_patients`` (a decision on DP
outputs: post-processing), clamped to [0, 1], optionally smoothed, upsampled to ``size``.

The file (:func:`write_shared_prior` / :func:`read_shared_prior`) is a folder with
``prior.npz`` (per group ``images`` (K, 1, S, S) float32, ``z``, ``released``, ``patients``)
and ``prior.json`` (format version, settings, DP statement, per group the contributing sites
and the noisy patients per bin, sha256 of ``prior.npz``); the prior's identity is the sha256
of ``prior.json`` (:func:`prior_sha256`), which a package's manifest records.

Example:
    >>> import numpy as np, torch
    >>> cfg = SharedPriorConfig(groups=["CT:chest"], bins=2, release_size=8, epsilon=None,
    ...                         min_patients=1)
    >>> means = torch.full((2, 1, 16, 16), 0.5)
    >>> sums = accumulate([(means, torch.tensor([True, False]))], cfg)
    >>> sums.counts.tolist()
    [1.0, 0.0]
    >>> p = release({"CT:chest": sums}, cfg, size=16, n_sites={"CT:chest": 1})
    >>> g = p.groups["CT:chest"]
    >>> g.released.tolist(), round(float(g.images[0].mean()), 3)
    ([True, False], 0.5)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from medidd.config import StrictModel, config_key
from medidd.lookup import look_up_option
from medidd.prior.atlas import atlas_slice
from medidd.prior.base import Prior
from medidd.prior.region import check_region
from medidd.prior.zmatch import prior_positions

#: The newest file format written; every version in SUPPORTED_VERSIONS is read.
FORMAT_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
META_FILE = "prior.json"
ARRAYS_FILE = "prior.npz"
AUDIT_FILE = "audit.json"
REFERENCES: tuple[str, ...] = ("zero", "atlas")
REGISTRATIONS: tuple[str, ...] = ("affine", "deformable", "none")
#: Public registration templates per group: (modality, atlas z), see medidd.prior.atlas.
TEMPLATES: dict[str, float] = {"CT:chest": 0.75, "CT:abdomen": 0.25, "MR:head": 0.55}
DEFAULT_GROUPS = ["CT:chest", "CT:abdomen", "CT:head", "MR:head", "MR:body"]

Array = npt.NDArray[np.float64]


class SharedPriorError(ValueError):
    """A shared-prior file or contribution that cannot be used; the message says why."""


def parse_group(name: str) -> tuple[str, str]:
    """``"CT:chest"`` -> ``("CT", "chest")``, both checked (did-you-mean).

    Example:
        >>> parse_group("MR:head")
        ('MR', 'head')
    """
    modality, sep, region = name.partition(":")
    if not sep:
        raise ValueError(f"a prior group is MODALITY:REGION (e.g. 'CT:chest'), got {name!r}")
    region = check_region(modality, region)
    return modality.upper(), region


class SharedPriorConfig(StrictModel):
    """The consortium's settings of a prior round (config key ``prior``).

    ``groups``: the (modality, region) priors to build, never mixed; ``bins``: axial bins
    (prior positions) per group; ``release_size``: side in px of what is summed and noised
    (noise per pixel of the released mean grows with it, see docs/prior.md); ``clip_norm``:
    L2 bound of one patient's residuals over all its bins (release px units, images in
    [0, 1]); ``count_weight``: weight of a patient's count in the clipped vector (noise on
    counts is ``noise_multiplier * sensitivity / count_weight`` patients); ``epsilon`` /
    ``delta``: the target guarantee per patient for the whole round (``epsilon: null``
    releases without noise: **not DP**, for measurements only); ``min_patients``: a bin with
    fewer (noisy) patients across sites is not released; ``reference``: public image
    subtracted before clipping (``zero`` or the ``atlas``); ``registration``: ``affine``
    (SimpleITK, to the group's public atlas template, where one exists), ``deformable``
    (affine then a B-spline refinement) or ``none``;
    ``smooth_sigma``: Gaussian smoothing of the released mean (release px; post-processing,
    free under DP).
    """

    groups: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUPS), min_length=1)
    bins: int = Field(8, ge=1, le=64)
    release_size: int = Field(32, ge=4, le=256)
    clip_norm: float = Field(8.0, gt=0)
    count_weight: float = Field(4.0, gt=0)
    epsilon: float | None = Field(4.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    min_patients: int = Field(3, ge=1)
    reference: str = "zero"
    registration: str = "affine"
    registration_iterations: int = Field(50, ge=1, le=1000)
    smooth_sigma: float = Field(0.0, ge=0)

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        out = [":".join(parse_group(g)) for g in value]
        if len(set(out)) != len(out):
            raise ValueError(f"prior groups are listed twice: {out}")
        return out

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: str) -> str:
        return look_up_option(value, REFERENCES, what="prior reference")

    @field_validator("registration")
    @classmethod
    def _registration(cls, value: str) -> str:
        return look_up_option(value, REGISTRATIONS, what="prior registration")

    @property
    def dp(self) -> bool:
        """Whether the round adds noise (``epsilon`` set)."""
        return self.epsilon is not None


# --------------------------------------------------------------------------- binning
def bin_of(z: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin index in ``[0, bins)`` of each normalised position ``z`` in [0, 1].

    Example:
        >>> bin_of(torch.tensor([0.0, 0.49, 0.5, 1.0]), 2).tolist()
        [0, 0, 1, 1]
    """
    return (z.float() * bins).floor().long().clamp(0, bins - 1)


def bin_means(images: torch.Tensor, z: torch.Tensor, bins: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean slice of one patient per bin, and which bins it has slices in.

    Args:
        images: (N, 1, H, W) one patient's slices; z: (N,) their normalised positions.

    Returns:
        ``(means (bins, 1, H, W), present (bins,) bool)``; empty bins are zeros.

    Example:
        >>> m, present = bin_means(torch.ones(3, 1, 4, 4), torch.tensor([0.1, 0.2, 0.3]), 2)
        >>> present.tolist(), float(m[0].mean()), float(m[1].mean())
        ([True, False], 1.0, 0.0)
    """
    idx = bin_of(z, bins)
    means = torch.zeros((bins, *images.shape[1:]), dtype=torch.float32)
    counts = torch.bincount(idx, minlength=bins)
    means.index_add_(0, idx, images.float())
    present = counts > 0
    means[present] /= counts[present].view(-1, 1, 1, 1).float()
    return means, present


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 1, size, size) by area averaging (or bilinear when enlarging)."""
    mode = "area" if size <= images.shape[-1] else "bilinear"
    return F.interpolate(images.float(), size=(size, size), mode=mode)


def reference_images(group: str, cfg: SharedPriorConfig, window: tuple[float, float]
                     ) -> torch.Tensor:
    """The public image subtracted before clipping, (bins, 1, r, r) at ``release_size``:
    zeros, or the atlas at the bin centres (``reference: atlas``)."""
    r = cfg.release_size
    if cfg.reference == "zero":
        return torch.zeros(cfg.bins, 1, r, r)
    modality, _ = parse_group(group)
    return torch.stack([atlas_slice(float(z), size=r, modality=modality, window=window)
                        for z in prior_positions(cfg.bins)])


# --------------------------------------------------------------------------- DP
def sensitivity(cfg: SharedPriorConfig) -> float:
    """L2 sensitivity of a node's vector to adding or removing one patient.

    Example:
        >>> sensitivity(SharedPriorConfig(clip_norm=3.0, count_weight=1.0, bins=16))
        5.0
    """
    return math.sqrt(cfg.clip_norm**2 + cfg.count_weight**2 * cfg.bins)


def noise_multiplier(epsilon: float, delta: float) -> float:
    """Noise multiplier of one Gaussian release (sample rate 1, one step) at
    ``(epsilon, delta)`` by Opacus' RDP accountant (:func:`medidd.privacy.dp.noise_multiplier_for`).

    Example:
        >>> round(noise_multiplier(4.0, 1e-5), 2)
        1.16
    """
    from medidd.privacy.dp import noise_multiplier_for

    return noise_multiplier_for(epsilon, delta, sample_rate=1.0, steps=1)


def noise_std(cfg: SharedPriorConfig) -> float:
    """Standard deviation of the noise on every sum and weighted count (0 without DP)."""
    if cfg.epsilon is None:
        return 0.0
    return noise_multiplier(cfg.epsilon, cfg.delta) * sensitivity(cfg)


def clip_patient(residuals: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, float]:
    """Scale one patient's residuals (all bins) to L2 norm at most ``clip_norm``; returns the
    clipped residuals and the norm before clipping.

    Example:
        >>> r, n = clip_patient(torch.full((2, 1, 2, 2), 1.0), 2.0)
        >>> round(float(r.norm()), 4), n
        (2.0, 2.8284270763397217)
    """
    norm = float(residuals.norm())
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return residuals * scale, norm


@dataclass
class GroupSums:
    """One group's sums at a node (or over sites): ``sums`` (bins, r, r) of clipped
    residuals and ``counts`` (bins,) of patients, both float64 (noised once noise is added);
    ``n_patients`` the exact number of patients (kept at the node, never sent) and
    ``clipped`` how many of them were clipped."""

    sums: Array
    counts: Array
    n_patients: int = 0
    clipped: int = 0

    @classmethod
    def zeros(cls, bins: int, size: int) -> GroupSums:
        """No patient: zeros of the right shapes."""
        return cls(np.zeros((bins, size, size)), np.zeros(bins))

    def arrays(self) -> list[Array]:
        """``[sums, counts]``: what goes into secure aggregation."""
        return [self.sums, self.counts]


def accumulate(patients: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: SharedPriorConfig,
               reference: torch.Tensor | None = None) -> GroupSums:
    """Clipped sums of one group at one node, without noise.

    Args:
        patients: per patient ``(means (bins, 1, H, W), present (bins,))`` from
            :func:`bin_means` (registered, any size: downsampled to ``release_size`` here).
        reference: (bins, 1, r, r) public reference (:func:`reference_images`); zeros if None.
    """
    r = cfg.release_size
    out = GroupSums.zeros(cfg.bins, r)
    ref = torch.zeros(cfg.bins, 1, r, r) if reference is None else reference.float()
    for means, present in patients:
        if means.shape[0] != cfg.bins or present.shape != (cfg.bins,):
            raise SharedPriorError(f"a patient has {means.shape[0]} bins, the round {cfg.bins}")
        mask = present.view(-1, 1, 1, 1).float()
        residual = (downsample(means, r) - ref).double() * mask.double()
        clipped, norm = clip_patient(residual, cfg.clip_norm)
        out.sums += clipped[:, 0].numpy()
        out.counts += present.double().numpy()
        out.n_patients += 1
        out.clipped += int(norm > cfg.clip_norm)
    return out


def add_noise(sums: GroupSums, cfg: SharedPriorConfig, rng: np.random.Generator) -> GroupSums:
    """``sums`` with Gaussian noise of :func:`noise_std` on every sum and weighted count
    (unchanged without DP). ``rng`` must be seeded from the OS (``np.random.default_rng()``)
    in a real round; a fixed seed is for tests.

    Example:
        >>> cfg = SharedPriorConfig(groups=["CT:chest"], bins=1, release_size=4, epsilon=1.0)
        >>> g = add_noise(GroupSums.zeros(1, 4), cfg, np.random.default_rng(0))
        >>> bool(np.abs(g.sums).max() > 0)
        True
    """
    std = noise_std(cfg)
    if std == 0:
        return GroupSums(sums.sums.copy(), sums.counts.copy(), sums.n_patients, sums.clipped)
    noisy_sums = sums.sums + rng.normal(0.0, std, sums.sums.shape)
    noisy_counts = sums.counts + rng.normal(0.0, std, sums.counts.shape) / cfg.count_weight
    return GroupSums(noisy_sums, noisy_counts, sums.n_patients, sums.clipped)


def expected_shapes(cfg: SharedPriorConfig) -> list[tuple[int, ...]]:
    """Shapes of the arrays of one contribution: per group ``(bins, r, r)`` and ``(bins,)``."""
    r = cfg.release_size
    return [s for _ in cfg.groups for s in ((cfg.bins, r, r), (cfg.bins,))]


def contribution_problems(arrays: list[npt.NDArray[Any]], cfg: SharedPriorConfig,
                          bound: float | None = None) -> list[str]:
    """Why a contribution (the arrays of every group, in order) cannot be summed: wrong
    number of arrays, a wrong shape, non-finite values, values beyond ``bound``.

    Example:
        >>> cfg = SharedPriorConfig(groups=["CT:chest"], bins=2, release_size=4)
        >>> contribution_problems([np.zeros((2, 4, 4)), np.array([1.0, np.nan])], cfg)
        ['CT:chest counts: 1 non-finite values']
    """
    want = expected_shapes(cfg)
    if len(arrays) != len(want):
        return [f"{len(arrays)} arrays, expected {len(want)} (sums and counts of "
                f"{len(cfg.groups)} groups)"]
    out = []
    for i, (arr, shape) in enumerate(zip(arrays, want, strict=True)):
        what = f"{cfg.groups[i // 2]} {'sums' if i % 2 == 0 else 'counts'}"
        if tuple(arr.shape) != shape:
            out.append(f"{what}: shape {tuple(arr.shape)}, expected {shape}")
            continue
        bad = int((~np.isfinite(arr)).sum())
        if bad:
            out.append(f"{what}: {bad} non-finite values")
        elif bound is not None and float(np.abs(arr).max(initial=0.0)) > bound:
            out.append(f"{what}: values beyond +-{bound:g} (the secure-aggregation range; "
                       f"raise {config_key('prior_round.clipping_range')})")
    return out


# --------------------------------------------------------------------------- release
@dataclass(frozen=True)
class PriorGroup:
    """One released group: ``images`` (bins, 1, size, size) float32 in [0, 1] (zeros where
    not released), ``z`` (bins,) bin centres, ``released`` (bins,) bool, ``patients``
    (bins,) the noisy number of patients across sites, ``n_sites`` the nodes that had
    patients of the group."""

    images: torch.Tensor
    z: torch.Tensor
    released: torch.Tensor
    patients: torch.Tensor
    n_sites: int


@dataclass
class SharedPrior:
    """A released shared prior: groups by name, the DP statement, the round's settings."""

    groups: dict[str, PriorGroup]
    statement: dict[str, Any]
    settings: dict[str, Any]
    size: int
    version: int = FORMAT_VERSION
    sha256: str | None = None
    audit: dict[str, Any] | None = field(default=None)

    def prior_for(self, modality: str, region: str, k: int, size: int | None = None
                  ) -> Prior:
        """A :class:`~medidd.prior.Prior` of ``k`` slices for one patient of ``modality`` /
        ``region``: each position of :func:`prior_positions` takes its bin's image
        (``kind="shared"``, ``local_data=False``).

        Raises:
            SharedPriorError: the group is not in the prior, or a needed bin was not released.
        """
        group = f"{modality.upper()}:{region}"
        if group not in self.groups:
            raise SharedPriorError(f"the shared prior {self.sha256 or ''} has no {group} group "
                                   f"(it has {', '.join(sorted(self.groups)) or 'none'})")
        g = self.groups[group]
        z = prior_positions(k)
        idx = bin_of(z, len(g.z))
        missing = sorted({int(i) for i in idx if not bool(g.released[i])})
        if missing:
            raise SharedPriorError(
                f"the shared prior's {group} bins {missing} were not released (fewer than "
                f"{self.settings.get('min_patients')} patients across sites); choose another "
                f"prior ({config_key('prior.kind')}) or lower {config_key('ipc')}")
        images = g.images[idx]
        if size is not None and size != images.shape[-1]:
            images = F.interpolate(images, size=(size, size), mode="bilinear",
                                   align_corners=False).clamp(0, 1)
        return Prior(images=images.contiguous(), z=z, kind="shared", local_data=False)


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def release(totals: Mapping[str, GroupSums], cfg: SharedPriorConfig, *, size: int,
            n_sites: Mapping[str, int], window: tuple[float, float] = (-1000.0, 1000.0),
            extra_statement: Mapping[str, Any] | None = None) -> SharedPrior:
    """Divide the summed contributions of every site into the prior (see the module doc).

    Args:
        totals: per group the sums over sites (noised at each site).
        size: side in px of the released images (the sites' preprocessing size).
        n_sites: per group how many sites had patients of it.
        window: CT window of the ``atlas`` reference (the consortium's ``ct_window``).
        extra_statement: more fields for the DP statement (e.g. the secure aggregation's).
    """
    groups = {}
    for name in cfg.groups:
        total = totals.get(name) or GroupSums.zeros(cfg.bins, cfg.release_size)
        ref = reference_images(name, cfg, window)
        counts = torch.from_numpy(np.asarray(total.counts, dtype=np.float64))
        released = counts >= cfg.min_patients
        mean = ref.double()[:, 0] + torch.from_numpy(total.sums) / counts.clamp(min=1e-9).view(
            -1, 1, 1)
        mean = torch.where(released.view(-1, 1, 1), mean, torch.zeros_like(mean))
        low = _smooth(mean.float().unsqueeze(1).clamp(0, 1), cfg.smooth_sigma)
        images = F.interpolate(low, size=(size, size), mode="bilinear",
                               align_corners=False).clamp(0, 1)
        images = images * released.view(-1, 1, 1, 1).float()
        groups[name] = PriorGroup(images.float().contiguous(), prior_positions(cfg.bins),
                                  released, counts.float(), int(n_sites.get(name, 0)))
    return SharedPrior(groups, dp_statement(cfg, extra_statement), cfg.model_dump(mode="json"),
                       size)


def dp_statement(cfg: SharedPriorConfig, extra: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """What the release guarantees, for the prior file and every package made from it."""
    base: dict[str, Any] = {
        "dp": cfg.dp, "unit": "patient", "mechanism": "gaussian", "accountant": "rdp",
        "epsilon": cfg.epsilon, "delta": cfg.delta if cfg.dp else None,
        "noise_multiplier": (noise_multiplier(cfg.epsilon, cfg.delta)
                             if cfg.epsilon is not None else 0.0),
        "sensitivity": sensitivity(cfg), "noise_std": noise_std(cfg),
        "clip_norm": cfg.clip_norm, "count_weight": cfg.count_weight,
        "noise_added_by": "each_site",
        "covers": ["prior_images", "patients_per_bin"] if cfg.dp else [],
        "not_covered": ([] if cfg.dp else ["everything: released without noise"])
        + ["which_groups_each_site_has"],
    }
    return base | dict(extra or {})


# --------------------------------------------------------------------------- file
def _arrays_bytes(prior: SharedPrior) -> bytes:
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, g in sorted(prior.groups.items()):
        arrays[f"{name}/images"] = g.images.numpy().astype(np.float32)
        arrays[f"{name}/z"] = g.z.numpy().astype(np.float32)
        arrays[f"{name}/released"] = g.released.numpy().astype(bool)
        arrays[f"{name}/patients"] = g.patients.numpy().astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # uncompressed: byte-stable
    return buf.getvalue()


def _meta(prior: SharedPrior, arrays_sha: str) -> dict[str, Any]:
    return {
        "format_version": prior.version, "kind": "shared_prior", "size": prior.size,
        "arrays_sha256": arrays_sha, "settings": prior.settings, "statement": prior.statement,
        "groups": {name: {"bins": int(g.z.numel()), "shape": list(g.images.shape),
                          "n_sites": g.n_sites,
                          "released": [bool(b) for b in g.released],
                          "patients_per_bin": [round(float(c), 2) for c in g.patients]}
                   for name, g in sorted(prior.groups.items())},
    }


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def prior_sha256(meta: Mapping[str, Any]) -> str:
    """The prior's identity: sha256 of its canonical ``prior.json`` (which holds the sha256
    of ``prior.npz``)."""
    return hashlib.sha256(_canonical(dict(meta))).hexdigest()


def write_shared_prior(prior: SharedPrior, out: Path) -> str:
    """Write ``prior`` into the folder ``out`` (atomically) and return its sha256."""
    from medidd.atomic import atomic_directory

    data = _arrays_bytes(prior)
    meta = _meta(prior, hashlib.sha256(data).hexdigest())
    with atomic_directory(Path(out)) as tmp:
        (tmp / ARRAYS_FILE).write_bytes(data)
        (tmp / META_FILE).write_bytes(_canonical(meta))
        if prior.audit is not None:
            (tmp / AUDIT_FILE).write_bytes(_canonical(prior.audit))
    prior.sha256 = prior_sha256(meta)
    return prior.sha256


def prior_files(path: Path) -> dict[str, bytes]:
    """The files of a prior folder (``prior.json``, ``prior.npz``, ``audit.json`` if any)."""
    folder = Path(path)
    if folder.is_file() and folder.name == META_FILE:
        folder = folder.parent
    if not (folder / META_FILE).is_file():
        raise SharedPriorError(f"{path}: no {META_FILE}; a shared prior is the folder that "
                               "'medidd-aggregate prior' wrote")
    names = (META_FILE, ARRAYS_FILE, AUDIT_FILE)
    return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}


def read_shared_prior(path: Path, *, expected_sha256: str | None = None) -> SharedPrior:
    """Read and check a shared-prior folder (or its ``prior.json``).

    Raises:
        SharedPriorError: unsupported version, a hash that does not match (the arrays'
            recorded one, or ``expected_sha256``), an array whose shape differs from the
            recorded one, a missing group.
    """
    return parse_shared_prior(prior_files(path), str(path), expected_sha256=expected_sha256)


def parse_shared_prior(files: Mapping[str, bytes], source: str = "prior", *,
                       expected_sha256: str | None = None) -> SharedPrior:
    """:func:`read_shared_prior` on the files' bytes (as a node receives them)."""
    try:
        meta = json.loads(files[META_FILE])
    except (KeyError, ValueError) as exc:
        raise SharedPriorError(f"{source}: {META_FILE} missing or not JSON ({exc})") from None
    version = meta.get("format_version")
    if version not in SUPPORTED_VERSIONS or meta.get("kind") != "shared_prior":
        raise SharedPriorError(f"{source}: format version {version!r} of kind "
                               f"{meta.get('kind')!r}; this medidd reads shared_prior "
                               f"versions {list(SUPPORTED_VERSIONS)}")
    sha = prior_sha256(meta)
    if expected_sha256 is not None and sha != expected_sha256:
        raise SharedPriorError(f"{source}: sha256 {sha} does not match the expected "
                               f"{expected_sha256} ({config_key('prior.sha256')})")
    data = files.get(ARRAYS_FILE, b"")
    if hashlib.sha256(data).hexdigest() != meta.get("arrays_sha256"):
        raise SharedPriorError(f"{source}: {ARRAYS_FILE} does not match the sha256 recorded "
                               f"in {META_FILE} (modified or truncated)")
    arrays = np.load(io.BytesIO(data), allow_pickle=False)
    groups = {}
    for name, info in meta["groups"].items():
        try:
            images = torch.from_numpy(np.array(arrays[f"{name}/images"], dtype=np.float32))
            g = PriorGroup(images, torch.from_numpy(np.array(arrays[f"{name}/z"])),
                           torch.from_numpy(np.array(arrays[f"{name}/released"], dtype=bool)),
                           torch.from_numpy(np.array(arrays[f"{name}/patients"])),
                           int(info["n_sites"]))
        except KeyError as exc:
            raise SharedPriorError(f"{source}: group {name} has no array {exc}") from None
        shape = [info["bins"], 1, meta["size"], meta["size"]]
        if list(g.images.shape) != shape or list(g.images.shape) != info["shape"]:
            raise SharedPriorError(f"{source}: group {name} images have shape "
                                   f"{list(g.images.shape)}, {META_FILE} says {shape}")
        groups[name] = g
    audit = None
    if AUDIT_FILE in files:
        audit = json.loads(files[AUDIT_FILE])
        if audit.get("prior_sha256") != sha:
            raise SharedPriorError(f"{source}: {AUDIT_FILE} belongs to prior "
                                   f"{audit.get('prior_sha256')}, not to this one ({sha})")
    return SharedPrior(groups, meta["statement"], meta["settings"], int(meta["size"]),
                       int(version), sha, audit)


def write_prior_audit(path: Path, audit: Mapping[str, Any]) -> None:
    """Write the audit of the prior in ``path`` beside it, bound to its sha256."""
    from medidd.atomic import atomic_write_bytes

    sha = read_shared_prior(path).sha256
    atomic_write_bytes(Path(path) / AUDIT_FILE, _canonical({**audit, "prior_sha256": sha}))
