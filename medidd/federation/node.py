"""A hospital node's side of the federation: its settings and the package it may serve.

Node settings are set *at the site* (``flower-supernode --node-config``, or the simulation's
node table) and never by the aggregator: where the package and the patients are, and whether
the operator allows serving a package whose audit did not pass. The node serves a package only
when it reads back valid and passes the audit gate (:func:`medidd.package.audit_gate`: its
audit passed, or an override is both allowed by the node config key ``override-audit`` and
recorded in the manifest, who and why, so the aggregator's report shows it). Messages name
node config keys as :func:`node_key` writes them; ``medidd-node`` maps them to its options.

Example:
    >>> s = NodeSettings.from_node_config({"name": "site-a", "package": "/data/pkg",
    ...                                    "override-audit": False, "partition-id": 0})
    >>> s.name, str(s.package)
    ('site-a', '/data/pkg')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from medidd.config import ConfigError, StrictModel, config_key
from medidd.lookup import look_up_option
from medidd.package import AuditInfo, Manifest, audit_gate, load_files, update_manifest
from medidd.package.validate import MANIFEST, check_contents, check_shard, parse_manifest

logger = logging.getLogger(__name__)

#: Keys Flower's simulation engine puts into every node config; not ours, ignored.
FLOWER_KEYS: frozenset[str] = frozenset({"partition-id", "num-partitions"})


def node_key(field: str) -> str:
    """How a message names a node setting: its node config key, spelt as Flower's
    ``--node-config`` takes it.

    Example:
        >>> node_key("override_audit")
        "node config key 'override-audit'"
    """
    return config_key(field.replace("_", "-"), "node config")


class NodeSettings(StrictModel):
    """One node's local settings. Paths are on the node's machine.

    ``package``: the distilled package folder (or .zip) to serve; ``patients``: the site's
    patients folder (FedAvg trains on it; held-out patients are those not in the package);
    ``holdout``: an explicit folder of held-out patients for evaluation; ``override_audit``:
    serve a package whose audit did not pass *if* its manifest records an override;
    ``salt_file`` / ``cache_dir``: pseudonymisation salt and preprocessing cache of the site;
    ``max_package_bytes``: the node refuses to send a larger package; ``region``: the body
    region of every patient of the site for the shared prior (``head``, ``chest``,
    ``abdomen`` for CT; ``head``, ``body`` for MR; default: :func:`medidd.prior.region.
    guess_region` per patient); ``prior_dir``: where the node keeps the shared prior it
    receives (``<prior_dir>/<sha256>``); ``report_dir``: where the node writes its site-local
    report after every evaluate round (:mod:`medidd.report.node`; default: beside the package,
    ``<package>.node-report``)."""

    name: str = Field("node", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    package: Path | None = None
    patients: Path | None = None
    holdout: Path | None = None
    override_audit: bool = False
    salt_file: Path | None = None
    cache_dir: Path | None = None
    max_package_bytes: int | None = Field(None, ge=1)
    region: str | None = None
    prior_dir: Path | None = None
    report_dir: Path | None = None

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        from medidd.prior.region import REGIONS

        valid = sorted({r for regions in REGIONS.values() for r in regions})
        return None if value is None else look_up_option(value, valid, what="region")

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any]) -> NodeSettings:
        """Build from a flat Flower node config (``override-audit`` or ``override_audit``).

        Flower's own keys (``partition-id``, ``num-partitions``) are ignored; any other
        unknown key is a :class:`~medidd.config.ConfigError` listing the valid ones.
        """
        data = {k.replace("-", "_"): v for k, v in config.items() if k not in FLOWER_KEYS}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [f"{node_key('.'.join(map(str, e['loc'])))}: {e['msg']}"
                     for e in exc.errors()]
            valid = ", ".join(k.replace("_", "-") for k in cls.model_fields)
            raise ConfigError("invalid node config: " + "; ".join(lines) +
                              f" (valid keys: {valid})") from exc

    def resolve_paths(self, base: Path) -> NodeSettings:
        """A copy with relative paths taken relative to ``base``."""
        updates = {}
        for key in ("package", "patients", "holdout", "salt_file", "cache_dir", "prior_dir",
                    "report_dir"):
            value = getattr(self, key)
            if value is not None and not Path(value).is_absolute():
                updates[key] = (Path(base) / value).resolve()
        return self.model_copy(update=updates)


class NodeRefusal(Exception):
    """The node will not serve its package; the message is one line, safe to send."""


@dataclass(frozen=True)
class ServedPackage:
    """What a node sends on ``query.collect``: the package files as written, and the manifest.

    ``override`` is ``"by: reason"`` when an audit override made the package servable."""

    files: dict[str, bytes]
    manifest: Manifest
    override: str | None = None

    @property
    def n_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())


def _package_path(settings: NodeSettings) -> Path:
    """The node's package folder; :class:`NodeRefusal` when none is configured."""
    if settings.package is None:
        raise NodeRefusal(f"node {settings.name} has no package configured "
                          f"({node_key('package')})")
    return Path(settings.package)


def package_to_serve(settings: NodeSettings) -> ServedPackage:
    """Read, validate and gate the node's package; :class:`NodeRefusal` says why not.

    Example:
        >>> package_to_serve(NodeSettings(name="a"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        medidd.federation.node.NodeRefusal: node a has no package configured (node config ...
    """
    files, problems = load_files(_package_path(settings), settings.max_package_bytes)
    if files is None:
        limit = (f" (the limit is {node_key('max_package_bytes')})"
                 if settings.max_package_bytes is not None else "")
        raise NodeRefusal(f"node {settings.name}: package unreadable: {'; '.join(problems)}"
                          f"{limit}")
    checked = check_contents(files)
    problems += checked.problems
    if problems or checked.manifest is None:
        raise NodeRefusal(f"node {settings.name}: package invalid ({len(problems)} problems): "
                          + "; ".join(problems[:5]))
    gate = audit_gate(checked.manifest, accept_override=settings.override_audit,
                      override_key=node_key("override_audit"))
    if not gate.ok:
        raise NodeRefusal(f"node {settings.name}: {gate.reason}")
    if gate.override is not None:
        logger.warning("serving a package whose audit did not pass: %s", gate.reason)
    return ServedPackage(files=files, manifest=checked.manifest, override=gate.override)


@dataclass(frozen=True)
class ServedShard:
    """What a node sends for shard ``index`` of ``n_shards`` on ``query.collect``: that
    shard's two array files as written, and (with shard 0) the manifest's bytes."""

    index: int
    n_shards: int
    files: dict[str, bytes]
    manifest_bytes: bytes | None

    @property
    def n_bytes(self) -> int:
        return sum(len(b) for b in self.files.values()) + len(self.manifest_bytes or b"")


def shard_to_serve(settings: NodeSettings, index: int = 0) -> ServedShard:
    """Read, check and gate one shard of the node's package (the manifest and that shard's
    files only: a large package is never read whole); :class:`NodeRefusal` says why not.

    The manifest is checked in full and the audit gate applied for every shard; the shard's
    files get every check of :func:`medidd.package.validate.check_shard`.

    Example:
        >>> shard_to_serve(NodeSettings(name="a"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        medidd.federation.node.NodeRefusal: node a has no package configured (node config ...
    """
    path = _package_path(settings)
    files, problems = load_files(path, only={MANIFEST})
    manifest = None
    if files is not None and MANIFEST in files:
        manifest, found = parse_manifest(files[MANIFEST])
        problems += found
    elif files is not None:
        problems.append(f"{MANIFEST}: missing (every package holds one)")
    if files is not None and manifest is not None:
        problems += [f"{name}: unexpected file in the package; only {MANIFEST} and the array "
                     "files it lists may be present; remove it"
                     for name in sorted(files) if name != MANIFEST and name not in manifest.files]
    if files is None or manifest is None or problems:
        raise NodeRefusal(f"node {settings.name}: package invalid ({len(problems)} problems): "
                          + "; ".join(problems[:5]))
    size = sum(e.bytes for e in manifest.files.values())
    if settings.max_package_bytes is not None and size > settings.max_package_bytes:
        raise NodeRefusal(f"node {settings.name}: package of {size} bytes is over the limit "
                          f"({node_key('max_package_bytes')})")
    gate = audit_gate(manifest, accept_override=settings.override_audit,
                      override_key=node_key("override_audit"))
    if not gate.ok:
        raise NodeRefusal(f"node {settings.name}: {gate.reason}")
    shards = manifest.shards()
    if not 0 <= index < len(shards):
        raise NodeRefusal(f"node {settings.name}: no shard {index} (the package has "
                          f"{len(shards)})")
    shard = shards[index]
    data, problems = load_files(path, only={shard.hq, shard.lq})
    checked = check_shard(manifest, shard, data or {})
    if data is None or problems or checked.problems:
        problems += checked.problems
        raise NodeRefusal(f"node {settings.name}: shard {index} invalid ({len(problems)} "
                          "problems): " + "; ".join(problems[:5]))
    return ServedShard(index, len(shards), data,
                       files[MANIFEST] if index == 0 else None)


def record_audit_override(package: Path, by: str, reason: str) -> Manifest:
    """Record an operator's override of a failed / missing audit in the package's manifest.

    The audit status is kept as it is (``failed`` / ``not_run``); only ``audit.override`` is
    set, so every reader (and the aggregator's report) sees who served it anyway and why.
    """
    files, problems = load_files(Path(package))
    checked = check_contents(files or {})
    if files is None or checked.manifest is None:
        raise NodeRefusal(f"cannot record an override: {'; '.join(problems + checked.problems)}")
    current = checked.manifest.audit or AuditInfo.model_validate({"status": "not_run"})
    raw = current.model_dump(mode="json") | {"override": {"by": by, "reason": reason}}
    return update_manifest(Path(package), audit=AuditInfo.model_validate(raw))
