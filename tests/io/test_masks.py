"""Label maps and masks are recognised by name and by content; real images, 8-bit MR included,
are not."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medidd.io.masks import label_map_evidence, mask_name_marker, uniform_fraction
from medidd.io.readers import LabelMapError, read_volume_file

# file name -> the marker word, or None for an image
NAMES = {
    # BIDS and BIDS-like (TPTBox, fMRIPrep, nnU-Net)
    "sub-ct_seg-vert_label-22_msk.nii.gz": "msk",
    "sub-ct_label-22_ct.nii.gz": None,  # label-22 is an entity: the crop around vertebra 22
    "sub-mri_label-6_T2w.nii.gz": None,
    "sub-01_desc-brain_mask.nii.gz": "mask",
    "sub-01_space-MNI_desc-aseg_dseg.nii.gz": "dseg",
    "sub-01_label-GM_probseg.nii.gz": "probseg",
    "sub-01_desc-preproc_T1w.nii.gz": None,
    "sub-01_T1w_roi.nii": "roi",
    # free-form names sites use
    "lung1_label.nrrd": "label",
    "Liver-Seg.nrrd": "seg",
    "brainMask.nii": "mask",
    "brainmask.nii.gz": "brainmask",
    "aparc+aseg.nii.gz": "aseg",
    "Segmentation.seg.nrrd": "seg",
    "LABELS.NII.GZ": "labels",
    "tumour_labelmap.nrrd": "labelmap",
    # images
    "T1_brain_masked.nii.gz": None,  # skull-stripped image
    "msk_knee_t2.nii.gz": None,  # musculoskeletal, not a mask
    "lung1.nrrd": None,
    "segmental_artery_cta.nii": None,
    "head_t1_itk.nii.gz": None,
}


@pytest.mark.parametrize("name", list(NAMES))
def test_mask_names(name: str) -> None:
    assert mask_name_marker(name) == NAMES[name]


def _blobs(n_labels: int, shape: tuple[int, int, int] = (12, 24, 24)) -> np.ndarray:
    """A label map: background 0 and ``n_labels`` boxes with values 20, 21, ..."""
    data = np.zeros(shape, np.uint8)
    for k in range(n_labels):
        z = k % shape[0]
        data[z : z + 2, 2 + k % 10 : 10 + k % 10, 4:14] = 20 + k
    return data


def test_content_of_label_maps() -> None:
    assert label_map_evidence(np.zeros((4, 4, 4), np.int16)) == "1 distinct integer value"
    assert label_map_evidence(_blobs(3)) == "4 distinct integer values"
    assert label_map_evidence(_blobs(3).astype(np.float32)) == "4 distinct integer values"
    assert label_map_evidence(_blobs(3).astype(bool)) == "2 distinct integer values"
    many = label_map_evidence(_blobs(11))
    assert many is not None and many.startswith("12 integer values in uniform regions")


def test_content_of_images() -> None:
    rng = np.random.default_rng(0)
    assert label_map_evidence(rng.normal(100, 20, (8, 16, 16)).astype(np.float32)) is None
    assert label_map_evidence(rng.integers(0, 256, (8, 16, 16)).astype(np.uint8)) is None
    assert label_map_evidence(np.arange(4096, dtype=np.int16).reshape(16, 16, 16)) is None
    assert label_map_evidence(np.zeros((0, 4, 4), np.uint8)) is None


def test_uniform_fraction_against_a_loop() -> None:
    data = _blobs(5, (4, 9, 7))
    data[1, 3, 3] = 7
    bg = 0
    best = 0.0
    for axis in range(3):
        equal = pairs = 0
        for idx in itertools.product(*(range(n) for n in data.shape)):
            nxt = list(idx)
            nxt[axis] += 1
            if nxt[axis] >= data.shape[axis]:
                continue
            a, b = data[idx], data[tuple(nxt)]
            if a != bg or b != bg:
                pairs += 1
                equal += int(a == b)
        best = max(best, equal / pairs)
    assert uniform_fraction(data) == pytest.approx(best)


def test_real_8bit_mr_is_an_image(real_samples: Path, tmp_path: Path) -> None:
    """``head_t1_itk`` holds 256 grey levels (0-255), 76% background: an image, not a mask."""
    path = real_samples / "mr" / "head_t1_itk.nii.gz"
    vol = read_volume_file(path, "head_t1_itk.nii.gz", patient_key="p", series_key="s")
    assert vol.modality == "MR" and vol.data.max() == 255
    image = nib.load(str(path))
    as_uint8 = np.asanyarray(image.dataobj).astype(np.uint8)  # the same voxels stored as uint8
    nib.save(nib.Nifti1Image(as_uint8, image.affine), str(tmp_path / "t1.nii.gz"))
    vol8 = read_volume_file(tmp_path / "t1.nii.gz", "t1.nii.gz", patient_key="p", series_key="s")
    assert vol8.modality == "MR"
    np.testing.assert_array_equal(vol8.data, vol.data)


@pytest.mark.parametrize(
    "mask",
    [
        "ct/spine_ct/sub-ct_seg-vert_label-22_msk.nii.gz",
        "ct/spine_ct/sub-ct_seg-subreg_label-22_msk.nii.gz",
        "mr/spine_t2/sub-mri_seg-vert_label-6_msk.nii.gz",
        "mr/spine_t2/sub-mri_seg-subreg_label-6_msk.nii.gz",
        "labels/brain1_label.nrrd",
    ],
)
def test_real_masks_under_a_neutral_name_are_found_by_content(
    real_samples: Path, tmp_path: Path, mask: str
) -> None:
    renamed = tmp_path / ("scan" + "".join(Path(mask).suffixes))
    renamed.write_bytes((real_samples / mask).read_bytes())
    with pytest.raises(LabelMapError, match=r"^scan\.n\w+(\.gz)?: label map or mask \("):
        read_volume_file(renamed, renamed.name, patient_key="p", series_key="s")
