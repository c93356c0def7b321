"""Input/output: DICOM series, NIfTI and NRRD volumes -> :class:`Volume`; patient discovery."""

from __future__ import annotations

import importlib
from typing import Any

from medidd.io.volume import MODALITIES, Cohort, Modality, Patient, Skipped, Volume

# Readers pull in pydicom, SimpleITK and nibabel (~1-2 s): loaded on first use only (PEP 562),
# so that `from medidd.io.volume import Volume` stays cheap.
_LAZY = {
    "IngestOptions": "medidd.io.options",
    "IngestReport": "medidd.io.discover",
    "ingest": "medidd.io.discover",
    "load_cohort": "medidd.io.discover",
    "summarise_cohort": "medidd.io.discover",
    "folder_patient_key": "medidd.io.discover",
    "load_or_create_salt": "medidd.io.pseudonym",
    "pseudonymise": "medidd.io.pseudonym",
    "read_volume_file": "medidd.io.readers",
    "write_dicom_series": "medidd.io.sample_data",
    "make_sample_patients": "medidd.io.sample_data",
    "sample_region": "medidd.io.sample_data",
    "sample_regions": "medidd.io.sample_data",
}

__all__ = [
    "MODALITIES",
    "Cohort",
    "IngestOptions",
    "IngestReport",
    "Modality",
    "Patient",
    "Skipped",
    "Volume",
    "folder_patient_key",
    "ingest",
    "load_cohort",
    "load_or_create_salt",
    "make_sample_patients",
    "pseudonymise",
    "read_volume_file",
    "sample_region",
    "sample_regions",
    "summarise_cohort",
    "write_dicom_series",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medidd.io' has no attribute '{name}'")
