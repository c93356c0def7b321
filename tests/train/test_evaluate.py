"""Evaluation on whole held-out slices: odd sizes, batching, modes, agreement with metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medidd.nets import build_net
from medidd.train import enhance, evaluate_enhancer, psnr, ssim
from tests.train.ct_data import gaussian_noise


@pytest.fixture(scope="module")
def odd(ct_heldout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hq = torch.nn.functional.interpolate(ct_heldout, size=(45, 37), mode="area")
    return hq, gaussian_noise(hq, seed=5)


@pytest.mark.parametrize("name", ["redcnn", "dncnn", "srcnn", "edsr", "unet"])
def test_whole_odd_sized_slices_any_batching(
    odd: tuple[torch.Tensor, torch.Tensor], name: str
) -> None:
    torch.manual_seed(0)
    model = build_net(name, width=8, depth=2)
    hq, lq = odd
    a = evaluate_enhancer(model, hq, lq, batch_size=4)
    b = evaluate_enhancer(model, hq, lq, batch_size=1)
    assert a.n == 6 and a.psnr_per_image.shape == (6,) and a.ssim_per_image.shape == (6,)
    np.testing.assert_allclose(a.psnr_per_image, b.psnr_per_image, rtol=1e-5)
    np.testing.assert_allclose(a.ssim_per_image, b.ssim_per_image, atol=1e-5)
    out = enhance(model, lq, batch_size=4)
    assert out.shape == lq.shape and out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(a.psnr_per_image, psnr(out, hq).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.ssim_per_image, ssim(out, hq).numpy(), atol=1e-6)


def test_lq_scores_and_identity(odd: tuple[torch.Tensor, torch.Tensor]) -> None:
    hq, lq = odd
    res = evaluate_enhancer(torch.nn.Identity(), hq, lq.clamp(0, 1))
    np.testing.assert_allclose(res.psnr_per_image, res.psnr_lq_per_image)
    assert res.psnr_gain == pytest.approx(0.0)
    assert res.psnr == pytest.approx(float(res.psnr_per_image.mean()))
    assert set(res.to_dict()) == {"psnr", "ssim", "psnr_lq", "ssim_lq", "n"}


def test_model_mode_and_gradients_untouched(odd: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = build_net("dncnn", width=4, depth=3, batch_norm=True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate_enhancer(model, *odd)
    assert model.training  # restored
    for key, value in model.state_dict().items():  # eval mode: BN running stats unchanged
        assert torch.equal(value, before[key])
    assert all(p.grad is None for p in model.parameters())


def test_shape_mismatch_is_an_error(odd: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="same shape"):
        evaluate_enhancer(torch.nn.Identity(), odd[0], odd[1][:, :, :40])
