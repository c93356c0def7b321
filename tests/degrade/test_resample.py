"""CT SR by antialiased downsampling and bicubic upsampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medidd.degrade.resample import downsample_upsample


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "area"])
def test_shape_and_real_slice(ct_real: tuple[torch.Tensor, float], scale: int, mode: str) -> None:
    hq, _ = ct_real
    lq = downsample_upsample(hq, scale, mode=mode)
    assert lq.shape == hq.shape and lq.dtype == hq.dtype
    err = float((lq - hq).abs().mean())
    assert 1e-3 < err < 0.1


def test_area_is_block_average_then_bicubic() -> None:
    gen = torch.Generator().manual_seed(0)
    hq = torch.rand(2, 1, 16, 16, generator=gen)
    blocks = hq.reshape(2, 1, 4, 4, 4, 4).mean(dim=(3, 5))
    ref = F.interpolate(blocks, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(downsample_upsample(hq, 4, mode="area"), ref)


def test_antialiasing_removes_the_finest_pattern() -> None:
    """A 1-pixel checkerboard is above the LR Nyquist limit: antialiased decimation maps it
    to (nearly) its mean instead of aliasing it to a full-contrast pattern."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    board = ((yy + xx) % 2).float()[None, None]
    lq = downsample_upsample(board, 2, mode="bicubic")
    assert float((lq - 0.5).abs().max()) < 0.1


def test_noise_seeding_and_gradients(ct_real: tuple[torch.Tensor, float]) -> None:
    hq = ct_real[0].clone().requires_grad_(True)
    a = downsample_upsample(hq, 2, noise_sigma=0.02, seed=5)
    b = downsample_upsample(hq, 2, noise_sigma=0.02, seed=5)
    c = downsample_upsample(hq, 2, noise_sigma=0.02, seed=6)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    (grad,) = torch.autograd.grad(a.sum(), hq)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0


def test_bad_scale() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        downsample_upsample(torch.zeros(1, 1, 8, 8), 1.5)  # type: ignore[arg-type]
