"""Per-image losses, and the loss attack end to end on real CT slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medidd.privacy.mia.losses import per_image_losses
from medidd.privacy.mia.scores import evaluate_attack, loss_threshold_scores, roc_auc


class NearestNeighbourDenoiser(nn.Module):
    """A perfect memoriser: returns the training target whose input is closest to the query."""

    def __init__(self, lq: torch.Tensor, hq: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("lq", lq.flatten(1))
        self.register_buffer("hq", hq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(x.flatten(1), self.lq).argmin(dim=1)
        return self.hq[nearest]


def _pairs(ct_slices: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    hq = torch.cat(list(ct_slices.values()))
    g = torch.Generator().manual_seed(0)
    return (hq + 0.05 * torch.randn(hq.shape, generator=g)).clamp(0, 1), hq


def test_per_image_losses_match_a_loop_and_restore_mode(ct_slices: dict[str, torch.Tensor]) -> None:
    lq, hq = _pairs(ct_slices)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.Conv2d(4, 1, 1))
    model.train()
    out = per_image_losses(model, lq, hq, batch_size=7)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        loop = torch.stack(
            [((model(x[None]) - y[None]) ** 2).mean() for x, y in zip(lq, hq, strict=True)]
        )
    torch.testing.assert_close(out.mse, loop.double(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(out.psnr, -10 * torch.log10(loop.double()), rtol=1e-5, atol=1e-5)
    assert out.mse.shape == (lq.shape[0],)
    with pytest.raises(ValueError, match="images"):
        per_image_losses(model, lq[:3], hq[:4])


def test_memorising_model_is_detected_and_an_untrained_one_is_not(
    ct_slices: dict[str, torch.Tensor],
) -> None:
    lq, hq = _pairs(ct_slices)
    # members and non-members drawn from the same slices of both patients
    member = torch.randperm(lq.shape[0], generator=torch.Generator().manual_seed(1)) < 16
    memoriser = NearestNeighbourDenoiser(lq[member], hq[member])
    scores = loss_threshold_scores(per_image_losses(memoriser, lq, hq).mse.numpy())
    m = member.numpy()
    result = evaluate_attack(scores[m], scores[~m], n_boot=200)
    assert result.auc > 0.99 and result.tpr_at_1 > 0.9

    torch.manual_seed(0)  # the test owns the global RNG; the library never touches it
    untrained = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)
    )
    scores = loss_threshold_scores(per_image_losses(untrained, lq, hq).mse.numpy())
    auc = roc_auc(scores[m], scores[~m])
    assert 0.25 < auc < 0.75
    lo, hi = evaluate_attack(scores[m], scores[~m], n_boot=200).auc_ci
    assert lo < 0.5 < hi
    assert np.isfinite(scores).all()
