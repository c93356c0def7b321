"""Tissue labels from HU thresholds, the real lesion masks, and the segmenter that learns them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medidd.nets.segment import (
    SegmenterConfig,
    TinyUNet,
    dice_per_class,
    segment,
    segmentation_loss,
    train_segmenter,
)
from medidd.train.labels import (
    HU_THRESHOLDS,
    LESION_CLASS,
    class_fractions,
    lesion_mask_for,
    resize_mask,
    tissue_labels,
    with_lesions,
)
from tests.train.ct_data import load_ct_slices

WINDOW = (-1000.0, 1000.0)


def _from_hu(hu: list[float], window: tuple[float, float] = WINDOW) -> torch.Tensor:
    lo, hi = window
    return ((torch.tensor(hu) - lo) / (hi - lo)).reshape(1, 1, 1, -1)


@pytest.mark.parametrize(
    ("hu", "expected"),
    [
        (-1000.0, 0),  # outside air
        (-700.0, 0),  # lung
        (-190.5, 0),
        (-190.0, 1),  # a bound goes up
        (-100.0, 1),  # fat
        (-30.5, 1),
        (-30.0, 2),
        (40.0, 2),  # muscle / organ
        (299.0, 2),
        (300.0, 3),
        (1000.0, 3),  # cortical bone (clipped by the window)
    ],
)
def test_class_of_each_hu_value(hu: float, expected: int) -> None:
    assert tissue_labels(_from_hu([hu])).item() == expected


def test_other_window_same_classes() -> None:
    hu = [-800.0, -100.0, 50.0, 400.0]
    window = (-400.0, 600.0)  # -800 clips to -400: still air
    assert tissue_labels(_from_hu(hu, window), window).flatten().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("window", "thresholds"),
    [
        ((-160.0, 240.0), HU_THRESHOLDS),  # the soft tissue window cuts off air and bone
        (WINDOW, (-30.0, -190.0, 300.0)),  # not increasing
        (WINDOW, (-190.0, -190.0, 300.0)),
        ((100.0, -100.0), (0.0,)),
    ],
)
def test_unrecoverable_thresholds_are_refused(
    window: tuple[float, float], thresholds: tuple[float, ...]
) -> None:
    with pytest.raises(ValueError, match="inside the window"):
        tissue_labels(torch.zeros(1, 1, 2, 2), window, thresholds)


def test_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        tissue_labels(torch.zeros(1, 2, 3, 3))


def test_real_chest_and_abdomen_fractions_are_plausible(real_samples: Path) -> None:
    chest = tissue_labels(load_ct_slices(real_samples / "ct" / "lung1.nrrd", 8))
    abdomen = tissue_labels(load_ct_slices(real_samples / "ct" / "abdomen_3mm.nii.gz", 8))
    f_chest, f_abdomen = class_fractions(chest), class_fractions(abdomen)
    assert float(f_chest.sum()) == pytest.approx(1.0)
    air, fat, soft, bone = f_chest.tolist()
    assert 0.45 < air < 0.8  # outside air + both lungs
    assert 0.05 < fat < 0.35 and 0.1 < soft < 0.4
    assert 0.002 < bone < 0.08  # spine, ribs, sternum: present but rare
    # every axial chest slice cuts the spine
    assert all(class_fractions(chest[i])[3] > 0 for i in range(chest.shape[0]))
    # lungs make the chest airier; the abdomen holds more fat
    assert f_chest[0] > f_abdomen[0] + 0.1
    assert f_abdomen[1] > f_chest[1]


def test_real_lesion_mask_lies_in_soft_tissue(real_samples: Path) -> None:
    image = real_samples / "ct" / "lung2.nrrd"
    mask = lesion_mask_for(image)
    assert mask is not None and mask.dtype == torch.bool
    sitk = pytest.importorskip("SimpleITK")
    volume = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(image))).astype("f4"))
    assert mask.shape == volume.shape
    slices = torch.nonzero(mask.flatten(1).any(1)).flatten()
    assert 0 < len(slices) < volume.shape[0]
    hq = ((volume[slices].clamp(*WINDOW) - WINDOW[0]) / (WINDOW[1] - WINDOW[0]))[:, None]
    labels = tissue_labels(hq)
    in_tumour = class_fractions(labels[mask[slices]])
    assert in_tumour[2] > 0.7  # a solid lung tumour is soft tissue
    merged = with_lesions(labels, mask[slices])
    assert int((merged == LESION_CLASS).sum()) == int(mask.sum())
    small = resize_mask(mask[slices], 128)
    assert small.shape == (len(slices), 128, 128) and small.any()


def test_lesion_mask_missing_or_misaligned(real_samples: Path, tmp_path: Path) -> None:
    assert lesion_mask_for(real_samples / "ct" / "abdomen_3mm.nii.gz") is None
    sitk = pytest.importorskip("SimpleITK")
    (tmp_path / "ct").mkdir()
    (tmp_path / "labels").mkdir()
    image = tmp_path / "ct" / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16)), str(image))
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((3, 8, 9), np.uint8)),
        str(tmp_path / "labels" / "scan_label.nrrd"),
    )
    with pytest.raises(ValueError, match=r"scan_label\.nrrd.*size"):
        lesion_mask_for(image)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (30, 17), (7, 9)])
def test_tiny_unet_keeps_any_size(h: int, w: int) -> None:
    net = TinyUNet(width=2, levels=3, n_classes=5)
    assert net(torch.rand(2, 1, h, w)).shape == (2, 5, h, w)


def test_segmentation_loss_matches_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, 5, generator=gen)
    labels = torch.randint(0, 4, (3, 6, 5), generator=gen)
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    torch.testing.assert_close(segmentation_loss(logits, labels), F.cross_entropy(logits, labels))
    torch.testing.assert_close(
        segmentation_loss(logits, labels, weight), F.cross_entropy(logits, labels, weight)
    )


def test_dice_against_a_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 3, (2, 7, 7), generator=gen)
    target = torch.randint(0, 3, (2, 7, 7), generator=gen)
    dice = dice_per_class(pred, target, 4)
    for c in range(3):
        p, t = (pred == c), (target == c)
        expected = 2 * (p & t).sum().item() / (p.sum().item() + t.sum().item())
        assert dice[c].item() == pytest.approx(expected)
    assert torch.isnan(dice[3])


def test_segmenter_learns_the_classes_of_a_held_out_patient(
    ct_train: torch.Tensor, ct_heldout: torch.Tensor
) -> None:
    cfg = SegmenterConfig(width=8, steps=120, patch_size=32, batch_size=8)
    a = train_segmenter(ct_train, tissue_labels(ct_train), seed=3, cfg=cfg)
    b = train_segmenter(ct_train, tissue_labels(ct_train), steps=5, seed=3, cfg=cfg)
    assert a.losses[:5] == b.losses  # seeded
    assert np.mean(a.losses[-10:]) < 0.5 * np.mean(a.losses[:10])
    dice = dice_per_class(segment(a.model, ct_heldout), tissue_labels(ct_heldout), 4)
    assert dice[0] > 0.9  # air
    assert float(dice[:3].mean()) > 0.6


def test_segmenter_inputs_are_checked() -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3"):
        train_segmenter(x, torch.full((2, 8, 8), 4), steps=1)
    with pytest.raises(ValueError, match="patch_size 64 exceeds"):
        train_segmenter(x, torch.zeros(2, 8, 8, dtype=torch.long), steps=1)
