"""The federation's run configuration: one strict model built from YAML (configs/federation.yaml).

Everything here is decided by the consortium and travels to the aggregator (and, for the
settings a node needs to score a model, to the nodes). What belongs to a hospital — where its
package and patients are, whether its operator overrode a failed audit — is *node* config
(:class:`~medidd.federation.node.NodeSettings`), set at the site and never sent by the server.
The ``nodes`` list below exists only for the in-process simulation, where one machine plays
every hospital.

Example:
    >>> cfg = FederationConfig.model_validate({"task": "denoise", "strategy": "fedavg"})
    >>> cfg.strategy, cfg.fedavg.rounds, cfg.policy.require_audit
    ('fedavg', 5, True)
    >>> FederationConfig.model_validate({"strategy": "fedavgg"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for FederationConfig
    ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from medidd.config import StrictModel, load_config
from medidd.degrade.ranged import RANGE_FIELDS, range_problem
from medidd.degrade.spec import DegradationSpec
from medidd.federation.audit import AuditConfig
from medidd.federation.node import NodeSettings
from medidd.federation.policy import CollectionPolicy
from medidd.federation.protocol import STRATEGIES
from medidd.lookup import look_up_option
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.prior.shared import SharedPriorConfig
from medidd.train.trainer import TrainConfig

TASKS: tuple[str, ...] = ("denoise", "sr")
#: the degradation kinds of the ``sr`` task
SR_KINDS: tuple[str, ...] = ("kspace_sr", "ct_sr")


class FedAvgConfig(StrictModel):
    """The raw-data FedAvg baseline: ``rounds`` rounds of ``local_steps`` local steps each.

    With the same ``train`` settings (net, batch, patch, lr) the total number of optimisation
    steps is ``rounds * local_steps`` per node; by default that matches ``train.steps`` of the
    distillation run, so the comparison spends the same compute per node."""

    rounds: int = Field(5, ge=1)
    local_steps: int = Field(160, ge=1)
    fraction_train: float = Field(1.0, gt=0, le=1)
    evaluate_every: int = Field(1, ge=0, description="score the averaged model on every "
                                "node's held-out slices after every this many rounds (the "
                                "report's PSNR per round; 0: only after the last)")


class EvalConfig(StrictModel):
    """How nodes score a model on their held-out real slices: LQ drawn with ``seed`` from the
    run's degradation spec; ``max_slices`` caps the slices per node (evenly spaced)."""

    batch_size: int = Field(8, ge=1)
    seed: int = 1234
    max_slices: int | None = Field(None, ge=1)


class Timeouts(StrictModel):
    """Seconds the ServerApp waits. ``wait_for_nodes_s``: for ``min_nodes`` SuperNodes to be
    online before the first round; the others are per round (a node that has not replied by
    then is reported missing and the run goes on without it)."""

    wait_for_nodes_s: float = Field(60.0, ge=0)
    collect_s: float = Field(120.0, gt=0)
    train_s: float = Field(600.0, gt=0)
    evaluate_s: float = Field(300.0, gt=0)
    audit_s: float = Field(600.0, gt=0)


class CollectConfig(StrictModel):
    """How the aggregator takes the packages in (``strategy: distill``): one shard of one
    node's package per request, at most ``max_in_flight`` requests at once (all the SuperLink
    and the ServerApp hold of the packages at any time, whatever the number of sites and
    patients), replies polled every ``poll_s`` seconds. Each shard is checked and kept on
    disk in ``spool_dir`` (default: ``.spool`` in the report folder; removed after training),
    and the model trains from there (:mod:`medidd.federation.spool`)."""

    max_in_flight: int = Field(4, ge=1)
    poll_s: float = Field(0.5, gt=0)
    spool_dir: Path | None = None


class PriorRoundConfig(StrictModel):
    """How the shared-prior round (``medidd-aggregate prior``) aggregates: Flower's SecAgg+
    (``SecAggPlusWorkflow``). ``num_shares`` / ``reconstruction_threshold``: as Flower takes
    them (an int: a count; a float: a fraction of the sites / of the shares); a node that
    drops out after sharing its keys is recovered while every node keeps at least the
    threshold of live neighbours. ``min_sites``: the round is refused, before any data
    moves, with fewer sites online (never below the threshold). ``clipping_range``: the
    secure aggregation's value range (each node's noised sums must lie within +-it; they
    are quantised to ``quantization_range`` levels over it). ``timeout_s``: per SecAgg+
    stage; ``audit``: send the released prior back to every node, which checks it against
    its real slices and replies only aggregates."""

    num_shares: int | float = 1.0
    reconstruction_threshold: int | float = 2
    min_sites: int = Field(3, ge=2)
    clipping_range: float = Field(4096.0, gt=0)
    quantization_range: int = Field(2**22, ge=2**8, le=2**24)
    timeout_s: float = Field(300.0, gt=0)
    audit: bool = True

    def threshold_for(self, n_sites: int) -> int:
        """The reconstruction threshold Flower's SecAgg+ uses with ``n_sites`` sites.

        Example:
            >>> PriorRoundConfig().threshold_for(3), PriorRoundConfig(
            ...     reconstruction_threshold=1.0).threshold_for(3)
            (2, 3)
        """
        shares = self.shares_for(n_sites)
        if isinstance(self.reconstruction_threshold, float):
            return max(round(self.reconstruction_threshold * shares), 2)
        return int(self.reconstruction_threshold)

    def shares_for(self, n_sites: int) -> int:
        """The number of shares Flower's SecAgg+ uses with ``n_sites`` sites."""
        if isinstance(self.num_shares, float):
            shares = round(self.num_shares * n_sites)
            if shares < n_sites and shares % 2 == 0:
                shares += 1
            return n_sites if shares <= 2 else shares
        return int(self.num_shares)


class FederationConfig(StrictModel):
    """A federated run: collect + validate + train on the union + federated evaluation
    (``strategy: distill``), or FedAvg on the nodes' raw slices (``strategy: fedavg``).

    ``degradation`` is the task's degradation spec (e.g. ``{"kind": "gaussian", "sigma": 0.05}``)
    used to draw LQ images for evaluation and for FedAvg; ``None`` takes the spec of the
    accepted packages (which must then agree). ``min_nodes`` is the least number of nodes the
    run needs; fewer replies make it fail with a report that says so. ``record_received`` keeps
    a copy of every payload the server received (``received/`` in the report folder) for a
    privacy review of what crossed the wire. ``audit.enabled`` adds a federated membership
    audit of the trained model after the ``evaluate`` round (:mod:`medidd.federation.audit`).
    ``prior`` / ``prior_round``: the shared-prior round of ``medidd-aggregate prior``."""

    task: str = "denoise"
    strategy: str = "distill"
    degradation: dict[str, Any] | None = None
    preprocess: PreprocessConfig = Field(
        default_factory=lambda: PreprocessConfig.model_validate({}))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig.model_validate({}))
    fedavg: FedAvgConfig = Field(default_factory=lambda: FedAvgConfig.model_validate({}))
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig.model_validate({}))
    policy: CollectionPolicy = Field(default_factory=lambda: CollectionPolicy.model_validate({}))
    audit: AuditConfig = Field(default_factory=lambda: AuditConfig.model_validate({}))
    timeouts: Timeouts = Field(default_factory=lambda: Timeouts.model_validate({}))
    collect: CollectConfig = Field(default_factory=lambda: CollectConfig.model_validate({}))
    prior: SharedPriorConfig = Field(
        default_factory=lambda: SharedPriorConfig.model_validate({}))
    prior_round: PriorRoundConfig = Field(
        default_factory=lambda: PriorRoundConfig.model_validate({}))
    min_nodes: int = Field(1, ge=1)
    expected_nodes: list[str] = Field(default_factory=list)
    record_received: bool = False
    nodes: list[NodeSettings] = Field(default_factory=list)

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        return look_up_option(value, STRATEGIES, what="strategy")

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return look_up_option(value, TASKS, what="task")

    @model_validator(mode="after")
    def _lq_range_fits(self) -> FederationConfig:
        """``train.lq_range`` must vary a field of the run's degradation: refused at load time
        (before any package is collected) when the config names the degradation, or when the
        task has no degradation that uses the field (``dose`` is CT low-dose only)."""
        rng = self.train.lq_range
        if rng is None:
            return self
        if self.degradation is not None and "kind" in self.degradation:
            kind = DegradationSpec.model_validate(self.degradation).kind
            problem = range_problem(rng.field, kind)
        elif self.task == "sr" and not set(RANGE_FIELDS[rng.field]) & set(SR_KINDS):
            problem = (f"train.lq_range varies '{rng.field}', which no super-resolution "
                       f"degradation ({', '.join(SR_KINDS)}) uses; set lq_range.field to "
                       "'noise_sigma' or remove train.lq_range")
        else:
            problem = None
        if problem:
            raise ValueError(problem)
        return self

    def node_names(self) -> list[str]:
        """Names of the nodes this run expects: ``expected_nodes`` or the simulated nodes."""
        return list(self.expected_nodes) or [n.name for n in self.nodes]

    def resolve_paths(self, base: Path) -> FederationConfig:
        """A copy whose relative node paths are taken relative to ``base`` (the YAML folder)."""
        nodes = [n.resolve_paths(base) for n in self.nodes]
        return self.model_copy(update={"nodes": nodes})


def load_federation_config(path: Path | None = None, overrides: list[str] | None = None
                           ) -> FederationConfig:
    """Load a federation YAML (+ ``key=value`` overrides); node paths relative to the file.

    Example:
        >>> load_federation_config(None, ["strategy=fedavg"]).strategy
        'fedavg'
    """
    cfg = load_config(FederationConfig, path, overrides or [])
    return cfg.resolve_paths(Path(path).parent) if path is not None else cfg
