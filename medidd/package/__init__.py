"""The distilled package format: what leaves the hospital, written atomically, read strictly.

A package is a folder (or a .zip of it) with ``manifest.json`` (:class:`Manifest`, also the
PHI allow-list) and the arrays ``hq`` / ``lq`` (N x 1 x H x W; safetensors or npz). Reading
validates everything and raises one :class:`PackageError` naming every bad file and field.

Example:
    >>> sorted(Manifest.model_json_schema()["properties"])[:3]
    ['audit', 'created', 'degradation']
"""

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
    "Manifest",
    "Package",
    "PackageError",
    "PatientEntry",
    "canonical_json",
    "config_hash",
    "export_nifti",
    "manifest_json",
    "manifest_problems",
    "parse_manifest",
    "read_package",
    "update_manifest",
    "validate_package",
    "write_package",
]
