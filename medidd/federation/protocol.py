"""Names of the messages and records that cross the wire between aggregator and nodes.

Only these travel (Flower ``Message`` types and ``RecordDict`` keys); the apps translate them
to library calls. What a node sends is, by construction, one of:

- ``query.collect`` reply: one shard of the package (the aggregator names it in ``SHARD``;
  none = shard 0): its files (``PACKAGE``: one uint8 array per file, the bytes of ``hq*`` /
  ``lq*`` exactly as written at the site, so the aggregator checks the manifest's sha256 end
  to end) and ``META``: the node's name, the shard's index and the number of shards, and with
  shard 0 the ``manifest.json`` text (a package with one file per array is one shard: the
  whole package in one reply);
- ``evaluate`` reply: ``METRICS``, aggregate scores over the node's held-out slices only;
- ``train`` reply (FedAvg baseline): ``MODEL`` weights and ``METRICS`` ``num-examples``;
- ``query.audit`` reply: ``METRICS``, aggregates of a membership attack on the trained model
  with the node's own members / non-members (:data:`AUDIT_METRICS` only);
- a refusal: ``META`` with ``refused`` (one line, no patient data).

What the aggregator sends with ``evaluate``, ``train`` and ``query.audit`` is one typed model
per round (:class:`EvaluateSettings`, :class:`TrainSettings`, :class:`AuditSettings`: strict,
frozen, bounded), serialised once by the aggregator as JSON in the ``SETTINGS`` ConfigRecord
and parsed once by the node with :func:`parse_settings`, whose :class:`SettingsError` names
every bad field.

Example:
    >>> COLLECT, EVALUATE, TRAIN, AUDIT
    ('query.collect', 'evaluate', 'train', 'query.audit')
    >>> from medidd.nets import NetConfig
    >>> s = EvaluateSettings(net=NetConfig(name="dncnn", width=4, depth=2),
    ...                      degradation={"kind": "gaussian", "noise_sigma": 0.05}, seed=1)
    >>> parse_settings(EvaluateSettings, s.model_dump_json()) == s
    True
    >>> parse_settings(EvaluateSettings, s.model_dump_json().replace('"seed"', '"sed"'))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    medidd.federation.protocol.SettingsError: evaluate settings from the aggregator rejected: ...
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, TypeVar

from pydantic import ConfigDict, Field, ValidationError, field_validator

from medidd.config import StrictModel
from medidd.lookup import look_up_option
from medidd.nets import NetConfig
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.prior.shared import SharedPriorConfig
from medidd.train import TrainConfig

#: How the aggregator gets its model: train on the collected packages, or raw-data FedAvg.
STRATEGIES: tuple[str, ...] = ("distill", "fedavg")

#: Message types (Flower "<category>.<action>"; no action = the default one).
COLLECT = "query.collect"
EVALUATE = "evaluate"
TRAIN = "train"
AUDIT = "query.audit"
#: The shared-prior round (its own Flower app, see aggregator/prior.py): the SecAgg+ stages
#: travel as plain ``train`` messages (Flower's SecAggPlusWorkflow / secaggplus_mod), the
#: audit of the released prior as ``query.prior_audit``.
PRIOR_AUDIT = "query.prior_audit"
PRIOR = "prior"  # ArrayRecord (prior_audit request): file name -> uint8 bytes of the prior

#: RecordDict keys.
PACKAGE = "package"  # ArrayRecord: file name -> uint8 bytes of that file
META = "meta"  # ConfigRecord: manifest.json text, node name, refusal reason
MODEL = "model"  # ArrayRecord: state dict of the enhancement net
SETTINGS = "settings"  # ConfigRecord: JSON of the round's settings (net, degradation, ...)
METRICS = "metrics"  # MetricRecord: aggregate numbers only
SHARD = "shard"  # ConfigRecord (collect request): which shard of its package a node sends

#: ConfigRecord / MetricRecord keys.
MANIFEST_KEY = "manifest.json"
NODE_NAME = "node-name"
REFUSED = "refused"
SETTINGS_JSON = "json"
NUM_EXAMPLES = "num-examples"
SHARD_INDEX = "shard-index"
N_SHARDS = "n-shards"

#: The only metric names a node may report after ``evaluate`` (aggregates, no per-slice data).
EVAL_METRICS: tuple[str, ...] = (
    "psnr", "ssim", "psnr_lq", "ssim_lq", "n_slices", "n_patients", "held_out",
)

#: The only metric names a node may report after ``query.audit``: the loss attack's AUC and
#: its bootstrap interval, TPR at 1% / 0.1% FPR, the FPR floor (1 / non-member slices) and the
#: slice and patient counts of each group.
AUDIT_METRICS: tuple[str, ...] = (
    "auc", "auc_low", "auc_high", "tpr_at_1fpr", "tpr_at_0_1fpr", "fpr_floor",
    "n_members", "n_nonmembers", "n_member_patients", "n_nonmember_patients",
)


# --------------------------------------------------------------------------- round settings


class RoundSettings(StrictModel):
    """What every round's settings hold: the task's ``degradation`` spec (checked against
    :class:`~medidd.degrade.DegradationSpec`, sent as written), the run's ``preprocess``
    settings (the node reads its patients with them) and the round's ``seed``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ROUND: ClassVar[str] = "round"

    degradation: dict[str, Any]
    preprocess: PreprocessConfig = Field(
        default_factory=lambda: PreprocessConfig.model_validate({}))
    seed: int = 0

    @field_validator("degradation")
    @classmethod
    def _spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        from medidd.degrade import DegradationSpec

        DegradationSpec.model_validate(value)  # raises, naming the bad field
        return value


class EvaluateSettings(RoundSettings):
    """``evaluate``: score ``net`` (weights in ``MODEL``) on held-out slices, LQ drawn with
    ``seed``; ``batch_size`` images per forward pass; ``max_slices`` evenly thinned slices
    per node (None: all)."""

    ROUND: ClassVar[str] = "evaluate"

    net: NetConfig
    batch_size: int = Field(8, ge=1)
    max_slices: int | None = Field(None, ge=1)


class TrainSettings(RoundSettings):
    """``train`` (FedAvg baseline): ``local_steps`` steps of ``train`` (net, batch, patch,
    lr...) from the weights in ``MODEL``, seeded with ``seed``."""

    ROUND: ClassVar[str] = "train"

    train: TrainConfig
    local_steps: int = Field(ge=1)


class AuditSettings(RoundSettings):
    """``query.audit``: attack ``net`` (weights in ``MODEL``) with the node's members and
    non-members; ``strategy`` says who the members are (``fedavg``: every patient the node
    trained on); ``n_boot`` bootstrap replicates; ``max_slices_per_patient`` evenly thinned."""

    ROUND: ClassVar[str] = "audit"

    strategy: str
    net: NetConfig
    n_boot: int = Field(200, ge=10)
    max_slices_per_patient: int | None = Field(64, ge=1)

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        return look_up_option(value, STRATEGIES, what="strategy")


class PriorSettings(StrictModel):
    """The shared-prior round's settings, sent in the SecAgg+ ``train`` instruction (the
    legacy ``FitIns`` config, key ``SETTINGS_JSON``) and with ``query.prior_audit``: the
    ``prior`` settings, the ``preprocess`` settings the node reads its patients with, and the
    secure aggregation's ``clipping_range`` (a node refuses values beyond it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ROUND: ClassVar[str] = "prior"

    prior: SharedPriorConfig
    preprocess: PreprocessConfig = Field(
        default_factory=lambda: PreprocessConfig.model_validate({}))
    clipping_range: float = Field(4096.0, gt=0)


#: The only keys of a node's reply to ``query.prior_audit`` (aggregates of the memorisation
#: audit of the released prior against the node's own real slices).
PRIOR_AUDIT_METRICS: tuple[str, ...] = ("max_nn_ncc", "ideal_line", "below_ideal")

S = TypeVar("S", bound=StrictModel)


class SettingsError(ValueError):
    """Round settings a node cannot use (missing, not JSON, a bad or unknown field); the
    message names every bad field and is safe to send back."""


def _field_problem(model: type[StrictModel], error: Any) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(settings)"
    if error["type"] != "extra_forbidden":
        return f"{loc}: {str(error['msg']).removeprefix('Value error, ')}"
    valid = list(model.model_fields) if len(error["loc"]) == 1 else []
    close = difflib.get_close_matches(str(error["loc"][-1]), valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{loc}: unknown key{hint}" + (f" (valid: {', '.join(valid)})" if valid else "")


def parse_settings(model: type[S], text: object) -> S:
    """Parse the JSON text of a ``SETTINGS`` record into ``model`` (once, on the node).

    Raises:
        SettingsError: ``text`` is missing or not a string, or does not validate (every bad
            field named, with a "did you mean" for an unknown key).
    """
    what = getattr(model, "ROUND", "round")
    if not isinstance(text, str):
        raise SettingsError(f"{what} settings missing: the message needs a "
                            f"'{SETTINGS}' record with the settings JSON under "
                            f"'{SETTINGS_JSON}'")
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(_field_problem(model, e) for e in exc.errors())
        raise SettingsError(f"{what} settings from the aggregator rejected: "
                            f"{problems}") from exc
