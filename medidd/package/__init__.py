"""The distilled package format: what leaves the hospital, written atomically, read strictly.

A package is a folder (or a .zip of it) with ``manifest.json`` (:class:`Manifest`, also the
PHI allow-list) and the arrays ``hq`` / ``lq`` (N x 1 x H x W; safetensors or npz). Reading
validates everything and raises one :class:`PackageError` naming every bad file and field.
:func:`audit_gate` is the one rule that decides whether a package may leave the site (node)
or be used (aggregator); :func:`load_files` reads a package's files into memory, safely.

Example:
    >>> sorted(Manifest.model_json_schema()["properties"])[:3]
    ['audit', 'created', 'degradation']
"""

from medidd.package.gate import Gate, audit_gate
from medidd.package.io import (
    ARRAY_FIELDS,
    Package,
    PackageError,
    manifest_json,
    read_package,
    update_manifest,
    validate_package,
    write_package,
)
from medidd.package.manifest import (
    FORMAT_VERSION,
    FORMATS,
    PATIENT_KEY_PATTERN,
    AuditInfo,
    AuditOverride,
    DPInfo,
    FileEntry,
    Manifest,
    PatientEntry,
    canonical_json,
    config_hash,
    manifest_problems,
)
from medidd.package.nifti import export_nifti
from medidd.package.source import load_files
from medidd.package.validate import HQ_RANGE, HQ_TOLERANCE, LQ_RANGE, parse_manifest

__all__ = [
    "ARRAY_FIELDS",
    "FORMATS",
    "FORMAT_VERSION",
    "HQ_RANGE",
    "HQ_TOLERANCE",
    "LQ_RANGE",
    "PATIENT_KEY_PATTERN",
    "AuditInfo",
    "AuditOverride",
    "DPInfo",
    "FileEntry",
    "Gate",
    "Manifest",
    "Package",
    "PackageError",
    "PatientEntry",
    "audit_gate",
    "canonical_json",
    "config_hash",
    "export_nifti",
    "load_files",
    "manifest_json",
    "manifest_problems",
    "parse_manifest",
    "read_package",
    "update_manifest",
    "validate_package",
    "write_package",
]
