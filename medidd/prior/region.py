"""Which body region a patient's slices show, so that priors of different regions never mix.

A shared prior is built per modality *and* region (``CT:chest``, ``CT:abdomen``, ``CT:head``,
``MR:head``, ``MR:body``): a chest averaged with an abdomen or a head is no anatomy at all.
The region comes from the site (node config ``region``: every patient of the node is of that
region) or, when the site does not say, from :func:`guess_region`, a content heuristic on the
preprocessed slices (cropped to the body and resized, so absolute sizes are gone):

- CT ``head``: bone (> 300 HU) is more than 12% of the body area (the skull ring) on the
  median slice and the body outline is taller than wide (width / height < 0.9);
- CT ``chest``: air inside the body (< -400 HU, holes of the body mask) exceeds 12% of the
  body area on the 90th-percentile slice (the lungs);
- CT ``abdomen``: any other body CT (abdomen, pelvis, spine crops);
- MR ``head`` when the outline is taller than wide (width / height < 1.0), else ``body``.

Measured on the 19 real sample patients (docs/prior.md): bone fraction 0.15-0.18 for the two
head CTs, <= 0.09 for the body CTs; internal air 0.13-0.53 for the seven chest CTs with
lungs in view, 0.02-0.07 for the abdomen, the lumbar spine and one lung-tumour crop without
lungs (called abdomen); MR width / height 0.72-0.87 for the five heads, 1.28-1.30 for the
abdomen and spine. A heuristic: a site that knows its protocol sets ``region``.

Example:
    >>> import torch
    >>> from medidd.preprocess.slices import SliceSet
    >>> x = torch.zeros(1, 1, 32, 32); x[..., 6:26, 2:30] = 0.52  # a wide water-like body
    >>> s = SliceSet(x.clone(), torch.zeros(1), "p-00", "CT", (-1000.0, 1000.0))
    >>> guess_region(s)
    'abdomen'
    >>> x[..., 10:22, 6:14] = 0.07; x[..., 10:22, 18:26] = 0.07  # two lungs (-860 HU)
    >>> guess_region(SliceSet(x, torch.zeros(1), "p-00", "CT", (-1000.0, 1000.0)))
    'chest'
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from medidd.lookup import look_up_option
from medidd.preprocess.slices import SliceSet

#: Regions per modality.
REGIONS: dict[str, tuple[str, ...]] = {"CT": ("head", "chest", "abdomen"),
                                       "MR": ("head", "body")}

HEAD_BONE_FRACTION = 0.12
HEAD_MAX_ASPECT = 0.9
CHEST_AIR_FRACTION = 0.12
MR_HEAD_MAX_ASPECT = 1.0


def check_region(modality: str, region: str) -> str:
    """``region`` if it is a region of ``modality`` (did-you-mean otherwise).

    Example:
        >>> check_region("CT", "chest")
        'chest'
        >>> check_region("MR", "chest")
        Traceback (most recent call last):
        ...
        ValueError: unknown MR region 'chest': valid: head, body
    """
    modality = look_up_option(modality, tuple(REGIONS), what="modality")
    return look_up_option(region, REGIONS[modality], what=f"{modality} region")


def _body(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_] | None:
    from scipy import ndimage

    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    largest = labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
    return np.asarray(ndimage.binary_fill_holes(largest), dtype=bool)


def _aspect(filled: npt.NDArray[np.bool_]) -> float:
    ys, xs = np.nonzero(filled)
    return float((xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1))


def region_features(slices: SliceSet) -> dict[str, float]:
    """The heuristic's numbers for one patient: ``air`` (90th percentile over slices of the
    internal-air fraction, CT), ``bone`` (median bone fraction, CT) and ``aspect`` (median
    width / height of the body outline).

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 4:28] = 0.5  # a wide block of water
        >>> f = region_features(SliceSet(x, torch.zeros(1), "p-0", "CT", (-1000.0, 1000.0)))
        >>> f["air"], f["bone"], round(f["aspect"], 2)
        (0.0, 0.0, 1.5)
    """
    lo, hi = slices.window
    air, bone, aspect = [], [], []
    for image in slices.images[:, 0].numpy():
        if slices.modality == "CT":
            hu = lo + image * (hi - lo)
            filled = _body(hu > -500.0)
        else:
            hu = image
            filled = _body(image > 0.1)
        if filled is None:
            continue
        area = float(filled.sum())
        if slices.modality == "CT":
            air.append(float(((hu < -400.0) & filled).sum()) / area)
            bone.append(float(((hu > 300.0) & filled).sum()) / area)
        aspect.append(_aspect(filled))
    return {"air": float(np.percentile(air, 90)) if air else 0.0,
            "bone": float(np.median(bone)) if bone else 0.0,
            "aspect": float(np.median(aspect)) if aspect else 1.0}


def guess_region(slices: SliceSet) -> str:
    """The body region of one patient's slices by the content heuristic of the module doc."""
    f = region_features(slices)
    if slices.modality == "CT":
        if f["bone"] > HEAD_BONE_FRACTION and f["aspect"] < HEAD_MAX_ASPECT:
            return "head"
        return "chest" if f["air"] > CHEST_AIR_FRACTION else "abdomen"
    return "head" if f["aspect"] < MR_HEAD_MAX_ASPECT else "body"


def patient_region(slices: SliceSet, site_region: str | None = None) -> str:
    """``site_region`` (checked against the modality) when the site set one, else
    :func:`guess_region`.

    Example:
        >>> import torch
        >>> s = SliceSet(torch.zeros(1, 1, 8, 8), torch.zeros(1), "p-0", "MR", (0.0, 1.0))
        >>> patient_region(s, "head")
        'head'
    """
    if site_region is not None:
        return check_region(slices.modality, site_region)
    return guess_region(slices)
