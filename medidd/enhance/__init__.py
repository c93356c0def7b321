"""Apply a trained model to a hospital's own scans (``medidd-node enhance``).

:func:`enhance_patients` reads DICOM or NIfTI patients with the site's ingestion, enhances
each volume with a model saved by :func:`medidd.model.save_model`, and writes NIfTI (and, for
DICOM input, a derived DICOM series) in native units on the input's own grid.

Example:
    >>> from medidd.enhance import enhance_patients, EnhanceError
    >>> issubclass(EnhanceError, ValueError)
    True
"""

from medidd.enhance.apply import ModelGrid, enhance_volume
from medidd.enhance.run import (
    EnhancedSeries,
    EnhanceError,
    EnhanceResult,
    check_output_folder,
    enhance_patients,
    source_grid,
)
from medidd.enhance.source import SourceError, SourceGrid, from_canonical_axial
from medidd.enhance.writers import write_derived_dicom, write_nifti

__all__ = [
    "EnhanceError",
    "EnhanceResult",
    "EnhancedSeries",
    "ModelGrid",
    "SourceError",
    "SourceGrid",
    "check_output_folder",
    "enhance_patients",
    "enhance_volume",
    "from_canonical_axial",
    "source_grid",
    "write_derived_dicom",
    "write_nifti",
]
