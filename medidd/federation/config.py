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

from pydantic import Field, field_validator

from medidd.config import StrictModel, load_config
from medidd.federation.audit import AuditConfig
from medidd.federation.node import NodeSettings
from medidd.federation.policy import CollectionPolicy
from medidd.federation.protocol import STRATEGIES
from medidd.lookup import look_up_option
from medidd.preprocess.pipeline import PreprocessConfig
from medidd.train.trainer import TrainConfig

TASKS: tuple[str, ...] = ("denoise", "sr")


class FedAvgConfig(StrictModel):
    """The raw-data FedAvg baseline: ``rounds`` rounds of ``local_steps`` local steps each.

    With the same ``train`` settings (net, batch, patch, lr) the total number of optimisation
    steps is ``rounds * local_steps`` per node; by default that matches ``train.steps`` of the
    distillation run, so the comparison spends the same compute per node."""

    rounds: int = Field(5, ge=1)
    local_steps: int = Field(160, ge=1)
    fraction_train: float = Field(1.0, gt=0, le=1)


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


class FederationConfig(StrictModel):
    """A federated run: collect + validate + train on the union + federated evaluation
    (``strategy: distill``), or FedAvg on the nodes' raw slices (``strategy: fedavg``).

    ``degradation`` is the task's degradation spec (e.g. ``{"kind": "gaussian", "sigma": 0.05}``)
    used to draw LQ images for evaluation and for FedAvg; ``None`` takes the spec of the
    accepted packages (which must then agree). ``min_nodes`` is the least number of nodes the
    run needs; fewer replies make it fail with a report that says so. ``record_received`` keeps
    a copy of every payload the server received (``received/`` in the report folder) for a
    privacy review of what crossed the wire. ``audit.enabled`` adds a federated membership
    audit of the trained model after the ``evaluate`` round (:mod:`medidd.federation.audit`)."""

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
