"""The federation's logic without Flower: what a node serves, what the aggregator accepts,
FedAvg maths, federated scores, the run report and development certificates.

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
    STRATEGIES,
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
    package_to_serve,
    record_audit_override,
)
from medidd.federation.policy import (
    CollectionPolicy,
    PackageVerdict,
    audit_gate,
    check_received_package,
)
from medidd.federation.report import (
    NodeReport,
    RunLedger,
    RunReport,
    read_report,
    write_report,
)
from medidd.federation.union import UnionResult, reconcile_degradation, train_on_union

__all__ = [
    "STRATEGIES",
    "AuditConfig",
    "CollectionPolicy",
    "EvalConfig",
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
    "Timeouts",
    "UnionResult",
    "audit_gate",
    "check_audit_metrics",
    "check_received_package",
    "fedavg",
    "load_federation_config",
    "make_dev_certificates",
    "make_supernode_keys",
    "membership_split",
    "package_to_serve",
    "pooled_audit",
    "read_report",
    "reconcile_degradation",
    "record_audit_override",
    "score_state",
    "split_local",
    "state_problems",
    "train_local",
    "train_on_union",
    "write_report",
]
