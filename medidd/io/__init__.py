"""Input/output: DICOM series, NIfTI and NRRD volumes -> :class:`Volume`; patient discovery."""

from medidd.io.volume import MODALITIES, Cohort, Modality, Patient, Skipped, Volume

__all__ = ["MODALITIES", "Cohort", "Modality", "Patient", "Skipped", "Volume"]
