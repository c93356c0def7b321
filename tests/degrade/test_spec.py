"""DegradationSpec validation, serialisation, and the contract every degradation keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medidd.config import ConfigError, load_config
from medidd.degrade import (
    KINDS,
    DegradationSpec,
    PerImageSeeds,
    build_degradation,
    default_spec,
)

from .conftest import CT_WINDOW

# One spec per kind (fast settings), and whether the op draws noise.
CASES = [
    (DegradationSpec(kind="ct_lowdose", dose=0.25, n_angles=60), True),
    (DegradationSpec(kind="ct_lowdose", dose=0.1, image_domain=True), True),
    (DegradationSpec(kind="kspace_sr", scale=2), False),
    (DegradationSpec(kind="kspace_sr", scale=4, taper="tukey", noise_sigma=0.01), True),
    (DegradationSpec(kind="ct_sr", scale=2), False),
    (DegradationSpec(kind="ct_sr", scale=4, downsample_mode="area", noise_sigma=0.01), True),
    (DegradationSpec(kind="gaussian", noise_sigma=0.04), True),
    (DegradationSpec(kind="rician", noise_sigma=0.04), True),
]
ILL_CASES = [
    ({"kind": "ct_lowdoze"}, "did you mean 'ct_lowdose'"),
    ({"kind": "ct_lowdose", "dose": 0.0}, "dose"),
    ({"kind": "ct_lowdose", "dose": 1.5}, "dose"),
    ({"kind": "ct_lowdose", "fbp_filter": "hamm"}, "did you mean 'hamming'"),
    ({"kind": "kspace_sr", "scale": 1}, "scale"),
    ({"kind": "kspace_sr", "taper": "hanning"}, "k-space taper"),
    ({"kind": "gaussian"}, "needs noise_sigma > 0"),
    ({"kind": "rician", "noise_sigma": -0.1}, "noise_sigma"),
    ({"kind": "ct_sr", "scael": 2}, "scael"),
]


def _ids(case: tuple[DegradationSpec, bool]) -> str:
    return f"{case[0].kind}-{case[0].label()}"


@pytest.fixture(scope="module")
def hq(ct_real: tuple[torch.Tensor, float]) -> torch.Tensor:
    return torch.cat([ct_real[0], ct_real[0].flip(-1)])


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_contract(case: tuple[DegradationSpec, bool], hq: torch.Tensor) -> None:
    spec, random = case
    op = build_degradation(spec, window=CT_WINDOW)
    lq = op(hq, seed=7)
    assert lq.shape == hq.shape and lq.dtype == hq.dtype and lq.device == hq.device
    assert torch.isfinite(lq).all()
    assert torch.equal(lq, op(hq, seed=7))
    assert torch.equal(lq, op(hq, seed=torch.Generator().manual_seed(7)))
    assert not torch.allclose(lq, hq, atol=1e-4)
    assert torch.allclose(lq, op(hq, seed=8)) != random
    rebuilt = build_degradation(DegradationSpec.model_validate_json(spec.model_dump_json()),
                                window=CT_WINDOW)
    assert torch.equal(lq, rebuilt(hq, seed=7))
    drawn, seed = op.random(hq, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, op(hq, seed))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_per_image_seeds_give_each_image_its_own_draw(
    case: tuple[DegradationSpec, bool], hq: torch.Tensor
) -> None:
    op = build_degradation(case[0], window=CT_WINDOW)
    batch = op(hq, seed=PerImageSeeds((11, 12)))
    alone = torch.cat([op(hq[:1], seed=11), op(hq[1:], seed=12)])
    assert torch.allclose(batch, alone, atol=1e-6)
    if case[1]:  # two seeds are two noise draws, not one draw repeated
        assert not torch.allclose(batch, op(hq, seed=PerImageSeeds((11, 11))), atol=1e-4)
        with pytest.raises(ValueError, match="2 per-image seeds for a batch of 3 images"):
            op(torch.cat([hq, hq[:1]]), seed=PerImageSeeds((1, 2)))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_differentiable(case: tuple[DegradationSpec, bool], hq: torch.Tensor) -> None:
    x = hq.clone().requires_grad_(True)
    lq = build_degradation(case[0], window=CT_WINDOW)(x, seed=0)
    (grad,) = torch.autograd.grad((lq * torch.linspace(0, 1, lq.numel()).view_as(lq)).sum(), x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0


def test_float64_batch_of_one(hq: torch.Tensor) -> None:
    for spec, _ in CASES:
        out = build_degradation(spec, window=CT_WINDOW)(hq[:1].double(), seed=0)
        assert out.dtype == torch.float64 and out.shape == (1, 1, 128, 128)


def test_full_dose_spec_is_identity(hq: torch.Tensor) -> None:
    op = build_degradation(DegradationSpec(kind="ct_lowdose", dose=1.0), window=CT_WINDOW)
    assert torch.equal(op(hq, seed=0), hq)


@pytest.mark.parametrize(("data", "expected"), ILL_CASES)
def test_ill_specs(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        DegradationSpec.model_validate(data)


def test_yaml_config_reports_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "degrade.yaml"
    path.write_text("kind: ct_lowdose\ndose: 2.0\ni0: -5\nn_angle: 90\n")
    with pytest.raises(ConfigError) as info:
        load_config(DegradationSpec, path)
    message = str(info.value)
    assert str(path) in message
    for field in ("dose", "i0", "n_angle", "did you mean 'n_angles'"):
        assert field in message


def test_json_round_trip_is_plain_data() -> None:
    for spec, _ in CASES:
        text = json.dumps(spec.model_dump(mode="json"))
        assert DegradationSpec.model_validate(json.loads(text)) == spec


def test_ct_lowdose_needs_the_window() -> None:
    with pytest.raises(ValueError, match="HU window"):
        build_degradation(DegradationSpec(kind="ct_lowdose"))


def test_default_specs() -> None:
    chosen = {(t, m): default_spec(t, m).kind for t in ("denoise", "sr") for m in ("CT", "MR")}
    assert chosen == {
        ("denoise", "CT"): "ct_lowdose",
        ("denoise", "MR"): "rician",
        ("sr", "CT"): "ct_sr",
        ("sr", "MR"): "kspace_sr",
    }
    assert set(chosen.values()) <= set(KINDS)
    with pytest.raises(ValueError, match="did you mean 'denoise'"):
        default_spec("denoize", "CT")
    with pytest.raises(ValueError, match="modality"):
        default_spec("sr", "PET")
