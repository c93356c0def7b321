"""LiRA with held-out slices of member patients: references are OUT only without the patient."""

from __future__ import annotations

import torch
from torch import nn

from medidd.privacy.membership import EvalSet, attack_model


class Blend(nn.Module):
    """``w * nearest(levels) + (1 - w) * lq``: a denoiser that knows the intensity ``levels``
    of the patients it was trained on (one level per patient in this constructed cohort)."""

    def __init__(self, levels: list[float], w: float = 0.9) -> None:
        super().__init__()
        self.levels = torch.tensor(levels)
        self.w = w

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        mean = lq.mean(dim=(1, 2, 3), keepdim=True)
        nearest = self.levels[(mean[..., None] - self.levels).abs().argmin(-1)]
        return self.w * nearest + (1 - self.w) * lq


def _set(levels: dict[str, float], n: int, seed: int) -> EvalSet:
    g = torch.Generator().manual_seed(seed)
    hq, keys = [], []
    for key, level in levels.items():
        hq.append(torch.full((n, 1, 16, 16), level))
        keys += [key] * n
    x = torch.cat(hq)
    return EvalSet(x, x + 0.05 * torch.randn(x.shape, generator=g), keys)


def test_held_out_slabs_are_calibrated_like_their_patient() -> None:
    """Two member patients A (0.2) and B (0.8), their held-out slabs A2, B2; a target that fits
    both; references that each saw one patient. Treating A2 as OUT for the reference trained on
    A (as for an unseen patient) makes members look special (AUC ~1) though the target fits
    members and held-out slabs equally; with ``holdout_of`` the attack is at chance."""
    members = _set({"p-00000000000a": 0.2, "p-00000000000b": 0.8}, 8, seed=0)
    held = _set({"p-0000000000a2": 0.2, "p-0000000000b2": 0.8}, 8, seed=1)
    target = Blend([0.2, 0.8])
    refs = [(Blend([0.2]), {"p-00000000000a"}), (Blend([0.8]), {"p-00000000000b"})]
    kw = {"n_boot": 50, "alpha": 0.05, "seed": 0}
    naive = attack_model(target, members, held, refs, **kw)  # type: ignore[arg-type]
    paired = attack_model(target, members, held, refs, **kw,  # type: ignore[arg-type]
                          holdout_of={"p-0000000000a2": "p-00000000000a",
                                      "p-0000000000b2": "p-00000000000b"})
    assert naive.attacks["lira"].result.auc > 0.95
    assert 0.2 < paired.attacks["lira"].result.auc < 0.8
    # the loss attack does not use references: the same either way
    assert naive.attacks["loss"].result.auc == paired.attacks["loss"].result.auc
