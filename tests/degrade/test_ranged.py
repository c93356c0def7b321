"""Training over a range of doses: per-image levels, batching-independent, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from medidd.config import ConfigError
from medidd.degrade import PerImageSeeds, draw_lq
from medidd.degrade.draw import image_seeds
from medidd.degrade.ranged import DegradationRange, RangedDegradation, ranged
from medidd.degrade.spec import DegradationSpec, build_degradation
from medidd.federation.config import load_federation_config
from medidd.train import TrainConfig, train_enhancer

WINDOW = (-1000.0, 1000.0)
DOSES = DegradationRange(field="dose", low=0.1, high=0.5, levels=4)


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    """Water discs of three sizes on air, in the CT window (a body-like noise pattern)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    r = (yy**2 + xx**2).sqrt()
    return torch.stack([((r < s).float() * 0.5)[None] for s in (0.5, 0.7, 0.9, 0.6)])


def test_each_image_gets_exactly_the_noise_of_its_level(phantom: torch.Tensor) -> None:
    base = build_degradation(DegradationSpec(kind="ct_lowdose", dose=0.25), WINDOW)
    op = RangedDegradation(base, DOSES)
    seeds = PerImageSeeds((11, 12, 13, 14))
    lq = op(phantom, seeds)
    for i, s in enumerate(seeds):
        dose = op.values[op.level(s)]
        alone = build_degradation(DegradationSpec(kind="ct_lowdose", dose=dose), WINDOW)
        # the same seed and dose; batched Radon sums differ only in float rounding
        torch.testing.assert_close(lq[i : i + 1], alone(phantom[i : i + 1], s),
                                   rtol=0, atol=1e-4)


def test_the_levels_span_the_range_and_lower_doses_are_noisier(phantom: torch.Tensor) -> None:
    base = build_degradation(DegradationSpec(kind="ct_lowdose", dose=0.25), WINDOW)
    op = RangedDegradation(base, DOSES)
    assert op.values[0] == pytest.approx(0.1) and op.values[-1] == pytest.approx(0.5)
    hq = phantom[:1].expand(64, -1, -1, -1).contiguous()
    lq = draw_lq(hq, op, 0, "t")
    seeds = image_seeds(0, "t", n=64)
    assert {op.level(s) for s in seeds} == {0, 1, 2, 3}  # 64 images reach every level
    err = ((lq - hq) ** 2).mean(dim=(1, 2, 3))
    lowest = err[[i for i, s in enumerate(seeds) if op.level(s) == 0]].mean()
    highest = err[[i for i, s in enumerate(seeds) if op.level(s) == 3]].mean()
    assert lowest > 2 * highest  # noise variance ~ 1/dose: 5x apart, at least 2x measured


def test_a_field_the_degradation_does_not_use_is_refused() -> None:
    op = build_degradation(DegradationSpec(kind="kspace_sr", scale=2))
    with pytest.raises(ValueError, match=r"set lq_range\.field to 'noise_sigma'"):
        RangedDegradation(op, DOSES)
    with pytest.raises(ValidationError, match="low must be below high"):
        TrainConfig.model_validate({"lq_range": {"field": "dose", "low": 0.5, "high": 0.2}})


@pytest.mark.parametrize(("overrides", "says"), [
    (["degradation={kind: kspace_sr, scale: 2}"],
     "for kspace_sr set lq_range.field to 'noise_sigma'"),
    (["task=sr", "degradation=null"], "no super-resolution degradation"),
])
def test_the_consortium_config_refuses_a_range_its_task_cannot_use_at_load_time(
        overrides: list[str], says: str) -> None:
    """An MR consortium that copies the CT config learns it when the run is loaded, not after
    every package has been collected."""
    config = Path(__file__).parents[2] / "configs" / "federation.yaml"
    ct_range = ["train.lq_range={field: dose, low: 0.5, high: 2.0, relative: true}"]
    assert load_federation_config(config, ct_range).train.lq_range is not None
    with pytest.raises(ConfigError, match="lq_range") as err:
        load_federation_config(config, [*ct_range, *overrides])
    assert says in str(err.value)
    fixed = load_federation_config(
        config, [*ct_range, *overrides, "train.lq_range.field=noise_sigma"])
    assert fixed.train.lq_range is not None and fixed.train.lq_range.field == "noise_sigma"


def test_ranged_leaves_fixed_pairs_and_custom_operators_alone() -> None:
    def custom(x: torch.Tensor, seed: int) -> torch.Tensor:
        return x

    assert ranged(custom, DOSES) is custom
    assert ranged(None, DOSES) is None


def test_training_with_a_dose_range_runs_and_differs(phantom: torch.Tensor) -> None:
    base = build_degradation(DegradationSpec(kind="ct_lowdose", dose=0.25, image_domain=True),
                             WINDOW)
    cfg = {"net": {"name": "dncnn", "width": 8, "depth": 3}, "steps": 4, "batch_size": 4,
           "patch_size": 24}
    plain = train_enhancer(phantom, None, TrainConfig.model_validate(cfg), degrade=base)
    wide = train_enhancer(phantom, None, TrainConfig.model_validate(
        cfg | {"lq_range": {"field": "dose", "low": 0.05, "high": 0.5}}), degrade=base)
    assert plain.losses != wide.losses
