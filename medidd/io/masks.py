"""Recognise label maps and masks, so that a segmentation never becomes a patient's image.

Sites keep segmentations beside their images (``sub-01_T1w.nii.gz`` next to
``sub-01_desc-brain_mask.nii.gz``, ``lung1.nrrd`` next to ``lung1_label.nrrd``). Two signs are
checked, and either one is enough:

* **the name** (:func:`mask_name_marker`): a word of the file name stem such as ``mask``,
  ``seg``, ``dseg``, ``probseg``, ``label``, ``labels``, ``labelmap`` or ``segmentation``
  (case-insensitive; also as the end of a word: ``brainmask``, ``aseg``), or a last word
  ``msk``, ``lbl`` or ``roi`` (BIDS-style suffixes).
  BIDS entities (``key-value`` parts such as ``label-22`` or ``desc-brain``) describe a file
  and do not count, so ``sub-ct_label-22_ct.nii.gz`` is an image and
  ``sub-ct_seg-vert_label-22_msk.nii.gz`` a mask;
* **the content** (:func:`label_map_evidence`): integer values (any dtype) that are either very
  few (at most 8 distinct) or form uniform regions (most voxels outside the background equal
  their neighbour, where image noise makes neighbours differ). A real 8-bit MR has ~256 values
  and neighbours that differ; a multi-label segmentation (vertebrae, organs) has up to a few
  hundred values in flat blobs.

Neither sign decides CT vs MR: a mask is skipped before any modality guess.

Example:
    >>> import numpy as np
    >>> mask_name_marker("sub-ct_seg-vert_label-22_msk.nii.gz"), mask_name_marker("lung1.nrrd")
    ('msk', None)
    >>> blobs = np.zeros((8, 16, 16), np.uint8); blobs[2:6, 4:12, 4:12] = 20; blobs[4:, 8:, :] = 21
    >>> label_map_evidence(blobs)
    '3 distinct integer values'
    >>> label_map_evidence(np.random.default_rng(0).integers(0, 256, (8, 16, 16)))  # 8-bit MR
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

#: Words of a file name stem that mark a label map or mask.
MASK_WORDS = frozenset(
    {"mask", "masks", "seg", "segs", "dseg", "probseg", "segmentation", "segmentations",
     "label", "labels", "labelmap", "labelmaps"}
)
#: Words that mark one only as the last word of the stem (a BIDS-style suffix): ``msk`` also
#: abbreviates "musculoskeletal" (``msk_knee_t2.nii``), ``lbl`` and ``roi`` are rarer.
SUFFIX_WORDS = frozenset({"msk", "lbl", "roi"})
#: Endings of a longer word that mark one (``brainmask``, ``aseg``, ``multilabel``).
MASK_ENDINGS = ("mask", "seg", "label", "labels")
#: BIDS entity keys: a ``key-value`` part with one of these keys describes the file.
BIDS_ENTITIES = frozenset(
    {"sub", "ses", "sample", "task", "acq", "ce", "trc", "stain", "rec", "dir", "run", "mod",
     "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "res", "den", "label", "desc",
     "chunk", "atlas", "cohort", "from", "to", "mode", "split", "recording", "tracksys"}
)
#: At most this many distinct integer values: a label map whatever its layout.
FEW_LABELS = 8
#: More distinct values than this (in a sample of the voxels): an image.
MAX_LABELS = 1024
#: Fraction of neighbouring foreground voxel pairs that are equal, from which integer data with
#: more than :data:`FEW_LABELS` values counts as uniform label regions (images: below 0.15;
#: the masks of the real samples: 0.74-0.95 along their finest axis).
UNIFORM_FRACTION = 0.5
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_SAMPLE_VOXELS = 200_000


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def mask_name_marker(name: str) -> str | None:
    """The word of a file name that marks a label map or mask, or ``None``.

    Args:
        name: a file name (``"lung1_label.nrrd"``) or stem; folders are not looked at.

    Example:
        >>> names = ("lung1_label.nrrd", "brainMask.nii", "T1_masked.nii",
        ...          "sub-01_desc-aseg_dseg.nii.gz", "sub-ct_label-22_ct.nii.gz")
        >>> [mask_name_marker(n) for n in names]
        ['label', 'mask', None, 'dseg', None]
    """
    words: list[str] = []
    for part in re.split(r"[_\s]+", _stem(name)):
        key, sep, _ = part.partition("-")
        if sep and key.lower() in BIDS_ENTITIES:
            continue  # a BIDS entity such as label-22: it names a structure, not the file type
        spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", part)  # brainMask -> brain Mask
        words += [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    if words and (words[-1] in MASK_WORDS or words[-1] in SUFFIX_WORDS):
        return words[-1]
    for word in words:
        if word in MASK_WORDS:
            return word
    for word in words:
        ending = next((e for e in MASK_ENDINGS if word.endswith(e)), None)
        if ending is not None:
            return word
    return None


def _is_integral(data: npt.NDArray[np.generic]) -> bool:
    if np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.bool_):
        return True
    if not np.issubdtype(data.dtype, np.floating):
        return False
    sample = data.ravel()[:: max(1, data.size // _SAMPLE_VOXELS)]
    if not np.array_equal(sample, np.round(sample)):
        return False
    return bool(np.array_equal(data, np.round(data)))


def uniform_fraction(data: npt.NDArray[np.generic]) -> float:
    """Largest fraction, over the array axes, of neighbouring voxel pairs that hold equal values,
    counting only pairs with a voxel outside the background (the most common value).

    Near 1 for label maps (flat blobs), below 0.15 for CT and MR images (noise and texture).

    Example:
        >>> flat = np.zeros((4, 8, 8), np.int16); flat[:, 2:6, 2:6] = 7
        >>> uniform_fraction(flat) > 0.5, uniform_fraction(np.arange(256).reshape(4, 8, 8)) > 0
        (True, False)
    """
    values, counts = np.unique(data.ravel()[:: max(1, data.size // _SAMPLE_VOXELS)],
                               return_counts=True)
    foreground = data != values[np.argmax(counts)]
    best = 0.0
    for axis in range(data.ndim):
        if data.shape[axis] < 2:
            continue
        a, f = np.moveaxis(data, axis, 0), np.moveaxis(foreground, axis, 0)
        pairs = f[1:] | f[:-1]
        n = int(np.count_nonzero(pairs))
        if n:
            best = max(best, int(np.count_nonzero((a[1:] == a[:-1]) & pairs)) / n)
    return best


def label_map_evidence(data: npt.NDArray[np.generic]) -> str | None:
    """Why the voxels ``data`` look like a label map or mask, or ``None`` when they look like an
    image (see the module docstring for the rule).

    Args:
        data: the stored voxels, any shape and dtype (before any rescaling to float).

    Example:
        >>> label_map_evidence(np.array([[0.0, 1.0], [1.0, 0.0]]))  # float 0/1 mask
        '2 distinct integer values'
        >>> label_map_evidence(np.array([0.5, 1.0, 2.0]))  # not integral: an image
    """
    if data.size == 0 or not _is_integral(data):
        return None
    sample = data.ravel()[:: max(1, data.size // _SAMPLE_VOXELS)]
    if np.unique(sample).size > MAX_LABELS:
        return None
    n_values = int(np.unique(data).size)
    if n_values <= FEW_LABELS:
        return f"{n_values} distinct integer value{'s' if n_values > 1 else ''}"
    if n_values > MAX_LABELS:
        return None
    uniform = uniform_fraction(data)
    if uniform >= UNIFORM_FRACTION:
        return f"{n_values} integer values in uniform regions ({uniform:.0%} of neighbours equal)"
    return None
