"""Seeded patch sampling: epochs cover every image, crops stay inside and match slicing."""

from __future__ import annotations

import pytest
import torch

from medidd.train.sampling import PatchSampler, crop


def _sampler(seed: int, patch: int | None = 5, batch: int = 4) -> PatchSampler:
    return PatchSampler(7, (10, 12), batch, patch, torch.Generator().manual_seed(seed))


def test_same_seed_same_batches_different_seed_different() -> None:
    a, b, c = _sampler(0), _sampler(0), _sampler(1)
    draws_a = [torch.cat(a.next()) for _ in range(5)]
    draws_b = [torch.cat(b.next()) for _ in range(5)]
    draws_c = [torch.cat(c.next()) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(draws_a, draws_b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(draws_a, draws_c, strict=True))


def test_every_image_once_per_epoch_and_crops_inside() -> None:
    sampler = _sampler(3, batch=7)
    for _ in range(4):
        idx, ys, xs = sampler.next()
        assert sorted(idx.tolist()) == list(range(7))
        assert ys.min() >= 0 and ys.max() <= 10 - 5 and xs.min() >= 0 and xs.max() <= 12 - 5


def test_crop_matches_slicing_and_whole_images() -> None:
    images = torch.arange(7 * 10 * 12, dtype=torch.float32).reshape(7, 1, 10, 12)
    idx, ys, xs = torch.tensor([6, 0]), torch.tensor([5, 0]), torch.tensor([7, 3])
    out = crop(images, idx, ys, xs, 5)
    assert torch.equal(out[0], images[6, :, 5:10, 7:12])
    assert torch.equal(out[1], images[0, :, 0:5, 3:8])
    whole = _sampler(0, patch=None)
    idx, ys, xs = whole.next()
    assert torch.equal(crop(images, idx, ys, xs, None), images[idx])


def test_patch_larger_than_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="patch_size 11 is larger"):
        _sampler(0, patch=11)
