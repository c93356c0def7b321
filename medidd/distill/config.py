"""Configuration of a distillation run: one typed model, unknown keys rejected.

Every ablation of DESIGN.md is a switch here, never a code fork: the method name picks the
algorithm; ``prior.kind`` picks the initialisation; ``spg`` shapes the generator and
``matching`` the objective.

Example:
    >>> cfg = DistillConfig.model_validate({"ipc": 2, "prior": {"kind": "atlas"}})
    >>> cfg.method, cfg.prior.kind, cfg.matching.objective
    ('spg_gm', 'atlas', 'gm+lfd')
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from medidd.config import StrictModel
from medidd.degrade.spec import DegradationSpec
from medidd.distill.options import DMOptions, IDCOptions, TripleDOptions
from medidd.lookup import look_up_option
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.prior import PRIOR_KINDS
from medidd.privacy.canaries import AuditDataConfig
from medidd.privacy.dp import DPConfig

TASKS = ("denoise", "sr")

OBJECTIVES = ("gm", "lfd", "gm+lfd", "tm", "tm+lfd")
STRUCTURE_LOSSES = ("gradient", "ssim", "lowpass", "none")
RESIDUALS = ("full", "highpass")


class PriorConfig(StrictModel):
    """The shared anatomical prior (default ``atlas``: it holds nothing of a local patient, so
    a DP guarantee covers the whole output; measured, the registered ``mean`` prior of our CT
    site reached NN-NCC 0.93 to a real slice, next to the 0.95 near-copy line).

    ``mean``: population mean of z-matched slices of the site's patients, groupwise-registered
    (affine, SimpleITK) when ``registered`` is on. ``medoid``: the paper's representative
    patient's real slices (ships near-copies: for comparison only). ``atlas``: a procedurally
    generated anatomical template holding nothing of any local patient. ``shared``: the
    consortium's prior built by the nodes together with DP and secure aggregation (``path``,
    optionally pinned by ``sha256``; ``region`` picks its group; docs/prior.md).

    ``fit_size`` (CT, prior-based methods ``prior_only`` and ``spg_gm``): zoom the prior to each
    patient's body size (medidd.prior.fit). Measured on our 4-patient CT site (IPC 2, 4 folds):
    mixed for the prior alone (67.5% vs 73% of the full-data gain, fold spread +-20 points),
    SPG-GM 77.5% with it vs 65% without (docs/method.md).
    """

    kind: str = "atlas"
    fit_size: bool = Field(
        True,
        description="CT: zoom the prior to each patient's water-equivalent diameter (median "
        "over its slices), so simulated low-dose noise has the patient's level; ships that one "
        "body-size number per patient (see medidd.prior.fit)",
    )
    fit_intensity: bool = Field(
        False,
        description="MR: map the prior's foreground intensities onto each patient's (16 "
        "quantiles; medidd.prior.fit.fit_intensity); ships that histogram per patient",
    )
    registered: bool = True
    registration_iterations: int = Field(2, ge=0, le=10)
    path: str | None = Field(None, description="kind shared: the prior folder that "
                             "'medidd-aggregate prior' wrote (site-local; not in the manifest)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="kind shared: "
                               "refuse a prior whose sha256 differs")
    region: str | None = Field(None, description="kind shared: the group's region (default: "
                               "what most of the site's patients show)")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        return look_up_option(v, PRIOR_KINDS, what="prior kind")


class TrajectoryConfig(StrictModel):
    """Trajectory matching (the ``trajectory`` section, used when ``matching.objective`` is
    ``tm`` or ``tm+lfd``; :mod:`medidd.distill.trajectory`).

    ``experts`` trajectories per matching architecture are trained on the patient's real pairs
    with SGD (``expert_lr``), keeping ``checkpoints`` snapshots ``steps_per_checkpoint`` steps
    apart; every matching step runs ``syn_steps`` differentiable SGD steps on the synthetic
    pairs from a checkpoint in the start window (``start``, or DATM's IPC-dependent window when
    None) and is scored against the expert ``span`` checkpoints later. The student's learning
    rate starts at ``expert_lr`` and is learnt (``learn_lr``) at ``lr_lr`` on a log scale.

    Example:
        >>> TrajectoryConfig(checkpoints=4, span=4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: ...span (4) must be below checkpoints (4)...
    """

    experts: int = Field(2, ge=1)
    checkpoints: int = Field(10, ge=2)
    steps_per_checkpoint: int = Field(10, ge=1)
    expert_lr: float = Field(0.2, gt=0)
    syn_steps: int = Field(10, ge=1)
    span: int = Field(2, ge=1)
    start: tuple[int, int] | None = None
    learn_lr: bool = True
    lr_lr: float = Field(0.01, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> TrajectoryConfig:
        if self.span >= self.checkpoints:
            raise ValueError(
                f"trajectory: span ({self.span}) must be below checkpoints "
                f"({self.checkpoints}); raise checkpoints or lower span"
            )
        if self.start is not None and not 0 <= self.start[0] <= self.start[1]:
            raise ValueError(f"trajectory.start must be [low, high] with 0 <= low <= "
                             f"high, got {list(self.start)}")
        return self


class MatchingConfig(StrictModel):
    """The matching objective shared by every optimisation-based method.

    ``objective``: ``gm`` = patient-aware gradient matching (dataset-condensation layer-wise
    distance); ``lfd`` = local-feature distribution matching (random local Fourier/conv
    features, seed 004 style); ``gm+lfd`` = both, weighted by ``lfd_weight``.
    Each of ``iterations`` outer steps draws a fresh matching network, runs ``outer_loop``
    matching updates, each followed by ``inner_steps`` updates of the network on the synthetic
    pairs (as dataset condensation does). ``fast_degradation`` uses the calibrated
    image-domain approximation of CT low dose inside the loop (about 10x cheaper; the shipped
    LQ always comes from the exact projection-domain operator).
    """

    objective: str = "gm+lfd"
    iterations: int = Field(20, ge=1)
    outer_loop: int = Field(5, ge=1)
    inner_steps: int = Field(2, ge=0)
    net_width: int = Field(16, ge=4)
    net_depth: int = Field(3, ge=2)
    patch_size: int = Field(48, ge=8)
    real_batch: int = Field(16, ge=1)
    syn_patches: int = Field(8, ge=1)
    lr_syn: float = Field(0.01, gt=0)
    lr_net: float = Field(0.01, gt=0)
    lfd_weight: float = Field(1.0, ge=0)
    lfd_features: int = Field(64, ge=4)
    lfd_kernel: int = Field(7, ge=3)
    lfd_frequencies: int = Field(64, ge=4)
    fast_degradation: bool = True
    nets: list[str] = Field(default_factory=lambda: ["plain"], min_length=1)

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: str) -> str:
        return look_up_option(v, OBJECTIVES, what="matching objective")

    @field_validator("nets")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        from medidd.distill.matching import MATCHING_NETS

        names = [look_up_option(x, MATCHING_NETS, what="matching net (matching.nets)") for x in v]
        if len(set(names)) != len(names):
            raise ValueError(f"matching.nets lists an architecture twice: {names}")
        return names

    @property
    def terms(self) -> set[str]:
        """The objective's terms, e.g. ``{"gm", "lfd"}``."""
        return set(self.objective.split("+"))


class SPGConfig(StrictModel):
    """Structure-preserving personalised generator: ``S = clip(P + a * tanh(G(P, z)), 0, 1)``.

    ``G`` sees the prior slice, its position ``z`` and ``noise_channels`` fixed seeded noise
    maps (so it can synthesise texture a smooth prior lacks, as a deep image prior does).
    ``residual: highpass`` (default) removes the Gaussian low-pass (``lowpass_sigma``) of the
    residual before adding it, so the prior's anatomy and intensities stay exactly and the
    generator can only add local structure. Measured: with ``full`` the matching drifted whole
    images brighter (the background of one CT patient went from 0 to ~0.3) and the downstream
    model lost most of its gain.

    ``structure`` picks the structure-preservation loss between ``S`` and the prior ``P``
    (weight ``structure_weight``): ``gradient`` (image-gradient L1, the paper-like choice),
    ``ssim`` (1 - SSIM), ``lowpass`` (only the low frequencies of S must stay those of P, so
    the generator is free to add texture), ``none``.

    Stabilisers (measured on the 4 real CT patients: without them the residual died on 3 of 4,
    the generator shipping the prior unchanged): ``centre`` subtracts each image's spatial mean
    from ``G``'s output before the tanh, so a drifting bias cannot push the whole image into
    tanh's flat tail (where every gradient is exactly 0 and the high-pass then removes the
    constant); ``grad_clip`` bounds the generator's gradient norm per step (the matching loss
    spikes 50x on some steps). ``grad_clip: 0`` and ``centre: false`` give the old behaviour.
    """

    width: int = Field(32, ge=4)
    depth: int = Field(4, ge=2)
    noise_channels: int = Field(2, ge=0)
    residual_scale: float = Field(0.1, gt=0, le=1)
    residual: str = "highpass"
    structure: str = "lowpass"
    structure_weight: float = Field(1.0, ge=0)
    lowpass_sigma: float = Field(3.0, gt=0)
    centre: bool = True
    grad_clip: float = Field(1.0, ge=0)

    @field_validator("structure")
    @classmethod
    def _structure(cls, v: str) -> str:
        return look_up_option(v, STRUCTURE_LOSSES, what="structure loss")

    @field_validator("residual")
    @classmethod
    def _residual(cls, v: str) -> str:
        return look_up_option(v, RESIDUALS, what="SPG residual")


#: degradations whose LQ of a patch alone is the LQ of the whole slice cropped (in
#: distribution): the aggregator re-draws a patch package's LQ from its patches
LOCAL_DEGRADATIONS = ("kspace_sr", "ct_sr", "gaussian", "rician")


class PatchConfig(StrictModel):
    """Patch packages (``size`` px squares instead of whole slices, at the same byte budget:
    ``ipc * H * W // size**2`` patches per patient; :func:`images_per_patient`).

    Each patch starts from the prior slice's ``size`` square with the most image-gradient
    energy inside the body (the prior is public; nothing of the patient chooses it), at as
    many prior positions as there are patches, so the package covers more anatomy for the same
    bytes. Prior-based methods only (``spg_gm``, ``prior_only``). Refused for projection- and
    image-domain low-dose CT: a patch's low-dose noise depends on the attenuation of the whole
    body, which a patch alone does not have, and the aggregator re-draws LQ from the patches.
    """

    size: int | None = Field(None, ge=16, description="patch side in pixels; None = whole slices")


def images_per_patient(cfg: DistillConfig, side: int) -> int:
    """Images a patient's output holds: ``ipc`` slices, or as many ``patches.size`` patches as
    fit in their bytes.

    Example:
        >>> images_per_patient(DistillConfig(ipc=2), 128)
        2
        >>> images_per_patient(DistillConfig(ipc=2, patches={"size": 64}), 128)
        8
    """
    if cfg.patches.size is None:
        return cfg.ipc
    return max(cfg.ipc, cfg.ipc * side * side // (cfg.patches.size**2))


class SelectionConfig(StrictModel):
    """Feature extractor for selection baselines (herding, k-center, TripleD): a fixed,
    seeded random convolutional encoder (no pretrained weights can be downloaded here)."""

    encoder_width: int = Field(32, ge=4)
    encoder_seed: int = 0


class DistillConfig(StrictModel):
    """A whole distillation run (``medidd-node distill``).

    ``degradation`` defaults to the task's standard operator for the site's modality
    (:func:`medidd.degrade.spec.default_spec`: 25% dose low-dose CT; x2 k-space MR SR...).
    ``min_slices`` is the fewest usable slices a patient must have to be distilled.
    ``dp`` makes ``spg_gm`` differentially private (privacy unit: one slice; per patient).
    ``audit`` sets aside what the site's audit needs: held-out slabs of every patient (never
    distilled) and canaries (:mod:`medidd.privacy.canaries`).
    """

    task: Literal["denoise", "sr"] = "denoise"
    method: str = "spg_gm"
    ipc: int = Field(2, ge=1, le=1000)
    seed: int = 0
    device: str = "auto"
    min_slices: int = Field(4, ge=1)
    degradation: DegradationSpec | None = None
    prior: PriorConfig = Field(default_factory=PriorConfig)
    matching: MatchingConfig = Field(default_factory=MatchingConfig)
    trajectory: TrajectoryConfig = Field(default_factory=TrajectoryConfig)
    patches: PatchConfig = Field(default_factory=PatchConfig)
    spg: SPGConfig = Field(default_factory=SPGConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    dm: DMOptions = Field(default_factory=DMOptions)
    idc: IDCOptions = Field(default_factory=IDCOptions)
    tripled: TripleDOptions = Field(default_factory=TripleDOptions)
    dp: DPConfig = Field(default_factory=DPConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    audit: AuditDataConfig = Field(default_factory=AuditDataConfig)

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v: str) -> str:
        return look_up_option(str(v), TASKS, what="task")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu") or v.startswith("cuda"):
            return v
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{v}'")
