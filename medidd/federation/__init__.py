"""The federation's logic without Flower: what a node serves, what the aggregator accepts,
FedAvg maths, federated scores, the typed round settings that cross the wire
(:mod:`~medidd.federation.protocol`), what a node does for each round
(:mod:`~medidd.federation.site`), the run report and development certificates. The audit gate
both sides apply is :func:`medidd.package.audit_gate`.

The Flower apps (``hospital_node/client_app.py``, ``aggregator/server_app.py``) only translate
messages into calls of this package; nothing here imports Flower.

Example:
    >>> from medidd.federation import CollectionPolicy, FederationConfig
    >>> FederationConfig().policy == CollectionPolicy()
    True
"""

from medidd.federation.audit import (
    AuditConfig,
    check_audit_metrics,
    membership_split,
    pooled_audit,
)
from medidd.federation.certs import make_dev_certificates, make_supernode_keys
from medidd.federation.config import (
    EvalConfig,
    FedAvgConfig,
    FederationConfig,
    Timeouts,
    load_federation_config,
)
from medidd.federation.fedavg import fedavg, state_problems
from medidd.federation.local import LocalData, score_state, split_local, train_local
from medidd.federation.node import (
    NodeRefusal,
    NodeSettings,
    ServedPackage,
    node_key,
    package_to_serve,
    record_audit_override,
)
from medidd.federation.policy import (
    CollectionPolicy,
    PackageVerdict,
    check_received_package,
)
from medidd.federation.protocol import (
    STRATEGIES,
    AuditSettings,
    EvaluateSettings,
    SettingsError,
    TrainSettings,
    parse_settings,
)
from medidd.federation.report import (
    NodeReport,
    RunLedger,
    RunReport,
    read_report,
    write_report,
)
from medidd.federation.site import audit_at_site, score_at_site, train_at_site
from medidd.federation.union import UnionResult, reconcile_degradation, train_on_union

__all__ = [
    "STRATEGIES",
    "AuditConfig",
    "AuditSettings",
    "CollectionPolicy",
    "EvalConfig",
    "EvaluateSettings",
    "FedAvgConfig",
    "FederationConfig",
    "LocalData",
    "NodeRefusal",
    "NodeReport",
    "NodeSettings",
    "PackageVerdict",
    "RunLedger",
    "RunReport",
    "ServedPackage",
    "SettingsError",
    "Timeouts",
    "TrainSettings",
    "UnionResult",
    "audit_at_site",
    "check_audit_metrics",
    "check_received_package",
    "fedavg",
    "load_federation_config",
    "make_dev_certificates",
    "make_supernode_keys",
    "membership_split",
    "node_key",
    "package_to_serve",
    "parse_settings",
    "pooled_audit",
    "read_report",
    "reconcile_degradation",
    "record_audit_override",
    "score_at_site",
    "score_state",
    "split_local",
    "state_problems",
    "train_at_site",
    "train_local",
    "train_on_union",
    "write_report",
]
