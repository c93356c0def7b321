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

from pydantic import Field, field_validator

from medidd.config import StrictModel
from medidd.degrade.spec import DegradationSpec
from medidd.distill.options import DMOptions, IDCOptions, TripleDOptions
from medidd.lookup import look_up_option
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.prior import PRIOR_KINDS
from medidd.privacy.canaries import AuditDataConfig
from medidd.privacy.dp import DPConfig

TASKS = ("denoise", "sr")

OBJECTIVES = ("gm", "lfd", "gm+lfd")
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

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: str) -> str:
        return look_up_option(v, OBJECTIVES, what="matching objective")


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
