"""Tissue classes of CT slices from Hounsfield thresholds, and the real lesion masks.

The auxiliary task of task-driven enhancement (``step_rule: gradprom``) segments four tissue
classes that any CT reading needs to keep apart. The labels are derived from HQ images alone,
so the aggregator computes them from the *distilled* HQ slices of a package: no label ever
leaves a site. Thresholds (HU, half-open intervals, textbook values):

============ ================== ==========================================================
class        HU range           why
============ ================== ==========================================================
0 air        < -190             outside air, lungs, bowel gas (and their partial volumes)
1 fat        [-190, -30)        adipose tissue (the usual body-composition window)
2 soft       [-30, 300)         water, muscle, organs, blood, contrast-enhanced vessels
3 bone       >= 300             cancellous and cortical bone, calcifications
============ ================== ==========================================================

The slices are normalised through a window ``(lo, hi)`` (HU -> [0, 1], clipped), so every
threshold must lie strictly inside the window to be recoverable.

The real samples also ship tumour masks (``labels/<name>_label.nrrd`` beside ``ct/<name>.nrrd``
or ``mr/<name>.nrrd``); :func:`lesion_mask_for` loads one on the volume's native grid. They
describe real patients, so they serve site-side evaluation only, never the aggregator.

Example:
    >>> import torch
    >>> hu = torch.tensor([-1000.0, -100.0, 40.0, 700.0]).reshape(1, 1, 1, 4)
    >>> tissue_labels((hu + 1000.0) / 2000.0).tolist()
    [[[0, 1, 2, 3]]]
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

TISSUE_CLASSES: tuple[str, ...] = ("air", "fat", "soft", "bone")
#: Class boundaries in HU: air < -190 <= fat < -30 <= soft < 300 <= bone.
HU_THRESHOLDS: tuple[float, ...] = (-190.0, -30.0, 300.0)
DEFAULT_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
#: The class index :func:`with_lesions` gives lesion pixels (after the tissue classes).
LESION_CLASS = len(TISSUE_CLASSES)


def check_thresholds(window: tuple[float, float], thresholds: tuple[float, ...]) -> None:
    """Raise ``ValueError`` unless ``thresholds`` increase strictly inside ``window``.

    Example:
        >>> check_thresholds((-160.0, 240.0), HU_THRESHOLDS)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: HU thresholds (-190.0, -30.0, 300.0) must increase strictly inside ...
    """
    lo, hi = float(window[0]), float(window[1])
    ok = lo < hi and all(lo < t < hi for t in thresholds)
    ok = ok and all(a < b for a, b in itertools.pairwise(thresholds))
    if not ok:
        raise ValueError(
            f"HU thresholds {tuple(thresholds)} must increase strictly inside the window "
            f"({lo:g}, {hi:g}): the images are clipped to the window, so a class bound outside "
            "it cannot be recovered; widen the window or change the thresholds"
        )


def tissue_labels(
    hq: torch.Tensor,
    window: tuple[float, float] = DEFAULT_WINDOW,
    thresholds: tuple[float, ...] = HU_THRESHOLDS,
) -> torch.Tensor:
    """Tissue class of every pixel of normalised CT images.

    Args:
        hq: (N, 1, H, W) images in [0, 1], normalised through ``window``.
        window: the (low, high) HU mapped to 0 and 1.
        thresholds: increasing class bounds in HU; class ``k`` is
            ``[thresholds[k-1], thresholds[k])``, so a pixel exactly on a bound goes up.

    Returns:
        (N, H, W) int64 labels in ``0 .. len(thresholds)`` on ``hq``'s device.

    Example:
        >>> import torch
        >>> tissue_labels(torch.full((2, 1, 3, 3), 0.5)).unique().tolist()  # 0 HU: soft
        [2]
    """
    if hq.ndim != 4 or hq.shape[1] != 1:
        raise ValueError(f"hq must be (N, 1, H, W), got {tuple(hq.shape)}")
    check_thresholds(window, thresholds)
    lo, hi = float(window[0]), float(window[1])
    hu = hq[:, 0].detach().float() * (hi - lo) + lo
    bounds = torch.tensor(thresholds, dtype=hu.dtype, device=hu.device)
    return torch.bucketize(hu, bounds, right=True)


def class_fractions(labels: torch.Tensor, n_classes: int = len(TISSUE_CLASSES)) -> torch.Tensor:
    """Fraction of pixels in each class, shape (n_classes,), summing to 1.

    Example:
        >>> import torch
        >>> class_fractions(torch.tensor([[0, 0, 1, 3]])).tolist()
        [0.5, 0.25, 0.0, 0.25]
    """
    counts = torch.bincount(labels.flatten().cpu(), minlength=n_classes)[:n_classes]
    return counts.double() / max(1, labels.numel())


def lesion_mask_for(image: Path, labels_dir: Path | None = None) -> torch.Tensor | None:
    """The tumour mask of a sample volume, on the volume's own grid, or None if it has none.

    Looks for ``<stem>_label.nrrd`` in ``labels_dir`` (default: ``labels/`` beside the volume's
    folder, the layout of the fetched samples) and checks that it shares the volume's size,
    spacing and origin.

    Args:
        image: the volume file, e.g. ``data/samples/ct/lung2.nrrd``.
        labels_dir: the folder of masks.

    Returns:
        (Z, H, W) bool tensor (axial slices first, like :class:`~medidd.io.Volume` data).

    Raises:
        ValueError: the mask exists but its geometry differs from the volume's.

    Example:
        >>> from pathlib import Path
        >>> lesion_mask_for(Path("data/samples/ct/abdomen_3mm.nii.gz")) is None
        True
    """
    image = Path(image)
    folder = Path(labels_dir) if labels_dir is not None else image.parent.parent / "labels"
    stem = image.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    path = folder / f"{stem}_label.nrrd"
    if not path.is_file():
        return None
    import SimpleITK as sitk  # a core dependency; imported here because it is slow to load

    mask, ref = sitk.ReadImage(str(path)), sitk.ReadImage(str(image))
    problems = []
    if mask.GetSize() != ref.GetSize():
        problems.append(f"size {mask.GetSize()} vs {ref.GetSize()}")
    if not np.allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-3):
        problems.append(f"spacing {mask.GetSpacing()} vs {ref.GetSpacing()}")
    if not np.allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-2):
        problems.append(f"origin {mask.GetOrigin()} vs {ref.GetOrigin()}")
    if problems:
        raise ValueError(
            f"{path.name}: the mask does not lie on the grid of {image.name} ("
            + "; ".join(problems)
            + "); resample it onto the volume first"
        )
    return torch.from_numpy(sitk.GetArrayFromImage(mask) > 0)


def resize_mask(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Area-resize (N, H, W) bool masks and keep pixels at least half covered.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 4, 4, dtype=torch.bool); m[0, :2, :2] = True
        >>> resize_mask(m, 2).tolist()
        [[[True, False], [False, False]]]
    """
    out = F.interpolate(mask[:, None].float(), size=size, mode="area")[:, 0]
    return out >= 0.5


def with_lesions(
    labels: torch.Tensor, lesion: torch.Tensor, lesion_class: int = LESION_CLASS
) -> torch.Tensor:
    """Tissue ``labels`` (N, H, W) with the pixels of ``lesion`` (same shape, bool) set to
    ``lesion_class``.

    Example:
        >>> import torch
        >>> with_lesions(torch.zeros(1, 1, 2, dtype=torch.long),
        ...              torch.tensor([[[False, True]]])).tolist()
        [[[0, 4]]]
    """
    if lesion.shape != labels.shape:
        raise ValueError(
            f"lesion mask shape {tuple(lesion.shape)} differs from labels {tuple(labels.shape)}"
        )
    return torch.where(lesion.to(labels.device), torch.full_like(labels, lesion_class), labels)
