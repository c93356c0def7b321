"""The privacy officer's policy: thresholds that decide whether a package may leave the site.

One strict model (:class:`AuditPolicy`, unknown keys rejected) read from ``configs/audit.yaml``.
The numbers and why they are what they are:

- ``near_copy_ncc`` 0.95: a distilled image this close (normalised cross-correlation) to a real
  slice *is* that slice; always a failure.
- ``ideal_quantile`` 0.99: the ideal line is this quantile of each real slice's similarity to its
  nearest slice of *another* patient. Above it, a shipped image is closer to a patient than
  patients are to each other. Reported always; a failure only with ``require_below_ideal``.
- ``max_mia_auc`` 0.6, read on ``auc_statistic``: ``point`` (default) compares the AUC estimate;
  ``upper`` compares the upper end of its bootstrap interval (stricter; with a few patients the
  interval is wide and most packages then fail). The slices of one patient are correlated, so the
  bootstrap resamples whole patients; the point estimate and the number of patients, both in
  the report, are the honest reading.
- ``gate_attacks``: which attacks the verdict reads (the highest AUC among them counts).
- ``min_control_auc`` 0.7: the model-level control (a model trained on the members' raw slices)
  is detected when the gate attacks reach this AUC. Reported; it decides the verdict only when
  the package has no canaries (older packages, ``audit.canaries: 0``).
- canaries (:mod:`medidd.privacy.canaries`): the package is **detected** when the one-run
  canary test on its images or on its model gives an epsilon lower bound above 0 at
  ``canary_confidence``; the **canary control** (the same test on the member slices as the
  distiller saw them) must reach ``min_control_eps`` or ``min_control_canary_auc``, otherwise
  the audit is inconclusive.
- ``allow_inconclusive`` False: an inconclusive audit (no non-members, or a control the attacks
  cannot detect) does not pass. True records it as passed *with* the reason, for demos.

Example:
    >>> p = AuditPolicy()
    >>> p.near_copy_ncc, p.max_mia_auc, p.gate_attacks, p.target.net.name
    (0.95, 0.6, ['loss', 'rmia'], 'dncnn')
    >>> AuditPolicy.model_validate({"gate_attacks": ["lria"]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for AuditPolicy
    ...
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from medidd.config import StrictModel
from medidd.lookup import look_up_option
from medidd.nets import NetConfig
from medidd.train import TrainConfig

ATTACKS = ("loss", "lira", "rmia", "loss_cal")
REFERENCE_ATTACKS = ("lira", "rmia", "loss_cal")
AUC_STATISTICS = ("point", "upper")


def default_target() -> TrainConfig:
    """The attacked model: a small DnCNN trained on the package like the aggregator would
    (patches, LQ re-drawn every epoch), with an L2 loss so it fits what the attack measures."""
    return TrainConfig(net=NetConfig(name="dncnn", width=16, depth=5), steps=300, batch_size=16,
                       patch_size=32, lr=1e-3, loss="l2", device="cpu")


def default_control() -> TrainConfig:
    """The positive control: the same net on the members' raw slices, whole images, fixed LQ
    pairs (the very pairs the attack scores), longer: a model that memorises its members."""
    return TrainConfig(net=NetConfig(name="dncnn", width=16, depth=5), steps=400, batch_size=8,
                       patch_size=None, lr=2e-3, loss="l2", redraw_lq=False, device="cpu")


class AuditPolicy(StrictModel):
    """Thresholds and settings of ``medidd-node audit`` (see the module docstring)."""

    # memorisation
    near_copy_ncc: float = Field(0.95, gt=0, le=1, description="NCC of a copy of a real slice")
    ideal_quantile: float = Field(0.99, ge=0.5, le=1)
    require_below_ideal: bool = Field(False, description="fail above the ideal line too")
    ssim_shortlist: int = Field(8, ge=1, description="real slices (best NCC) scored by SSIM")
    reference_slices_per_patient: int = Field(
        32, ge=2, description="slices per patient for the cross-patient SSIM line")
    max_shift: int = Field(0, ge=0, le=8, description="px of translation searched for copies")
    # membership inference
    run_mia: bool = True
    max_mia_auc: float = Field(0.6, ge=0.5, le=1)
    auc_statistic: str = "point"
    gate_attacks: list[str] = Field(default_factory=lambda: ["loss", "rmia"], min_length=1)
    min_control_auc: float = Field(0.7, ge=0.5, le=1)
    allow_inconclusive: bool = False
    n_reference_models: int = Field(
        2, ge=0, description="references of LiRA/RMIA/loss_cal (even; 0 = loss attack only)")
    lq_draws: int = Field(2, ge=1, le=16, description="LQ draws per scored slice (averaged)")
    # canaries (one-run audit)
    canary_confidence: float = Field(0.95, gt=0.5, lt=1)
    min_control_eps: float = Field(1.0, gt=0, description="canary control: detected at this "
                                   "epsilon lower bound ...")
    min_control_canary_auc: float = Field(0.8, ge=0.5, le=1, description="... or this AUC")
    max_eval_slices_per_patient: int | None = Field(64, ge=1)
    control_slices_per_patient: int = Field(8, ge=1)
    fast_degradation: bool = Field(
        True, description="image-domain approximation of CT low dose for every audit model")
    target: TrainConfig = Field(default_factory=default_target)
    control: TrainConfig = Field(default_factory=default_control)
    n_boot: int = Field(500, ge=10)
    alpha: float = Field(0.05, gt=0, lt=1)
    seed: int = 0
    # PHI
    phi_scan: bool = True

    @field_validator("auc_statistic")
    @classmethod
    def _statistic(cls, value: str) -> str:
        return look_up_option(value, AUC_STATISTICS, what="auc_statistic")

    @field_validator("gate_attacks")
    @classmethod
    def _attacks(cls, value: list[str]) -> list[str]:
        return [look_up_option(v, ATTACKS, what="attack") for v in value]

    @model_validator(mode="after")
    def _even_references(self) -> AuditPolicy:
        if self.n_reference_models % 2:
            raise ValueError(
                f"n_reference_models must be even (complementary halves), got "
                f"{self.n_reference_models}")
        needs = sorted(set(self.gate_attacks) & set(REFERENCE_ATTACKS))
        if needs and self.n_reference_models == 0 and self.run_mia:
            raise ValueError(f"gate_attacks names {needs} but n_reference_models is 0; train "
                             "references (e.g. 2) or gate on 'loss' only")
        return self
