"""GradProm and the naive sum: the gate on constructed gradients, the first-order guarantee on a
real model and real CT batch, and end-to-end training through the trainer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from medidd.nets import build_net
from medidd.nets.segment import SegmenterConfig, TinyUNet, segmentation_loss, train_segmenter
from medidd.train import STEP_RULES, StepRule, TrainConfig, build_step_rule, train_enhancer
from medidd.train.gradprom import (
    GradPromRule,
    SumRule,
    aligned_fraction,
    flat_cosine,
    promote,
)
from medidd.train.labels import tissue_labels
from tests.train.ct_data import gaussian_noise

E = [torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 2.0]])]

# (name, g_aux, gated, expected combined gradient (w = 0.5), expected aligned)
CASES = [
    (
        "aligned",
        [torch.tensor([1.0, 1.0]), torch.tensor([[0.0, 1.0]])],
        True,
        [[1.5, 0.5], [[0.0, 2.5]]],
        1.0,
    ),
    (
        "opposed",
        [torch.tensor([-1.0, 0.0]), torch.tensor([[0.0, -1.0]])],
        True,
        [[1.0, 0.0], [[0.0, 2.0]]],
        0.0,
    ),
    (
        "orthogonal: the tie is not aligned",
        [torch.tensor([0.0, 3.0]), torch.tensor([[1.0, 0.0]])],
        True,
        [[1.0, 0.0], [[0.0, 2.0]]],
        0.0,
    ),
    (
        "zero auxiliary gradient",
        [torch.zeros(2), torch.zeros(1, 2)],
        True,
        [[1.0, 0.0], [[0.0, 2.0]]],
        0.0,
    ),
    (
        "sum adds even when opposed",
        [torch.tensor([-1.0, 0.0]), torch.tensor([[0.0, -1.0]])],
        False,
        [[0.5, 0.0], [[0.0, 1.5]]],
        1.0,
    ),
]


@pytest.mark.parametrize(("name", "g_aux", "gated", "expected", "aligned"), CASES)
def test_gate_on_constructed_gradients(
    name: str,
    g_aux: list[torch.Tensor],
    gated: bool,
    expected: list[list[float]],
    aligned: float,
) -> None:
    out = promote(E, g_aux, 0.5, gated=gated)
    assert [g.tolist() for g in out.grads] == expected, name
    assert out.aligned == aligned


def test_cosine_is_over_the_concatenation() -> None:
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    b = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    flat = F.cosine_similarity(
        torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b]), dim=0
    )
    assert flat_cosine(a, b) == pytest.approx(float(flat), abs=1e-6)
    assert flat_cosine(a, [torch.zeros(3, 4), torch.zeros(5)]) == 0.0
    assert promote(a, b, 1.0).cos == pytest.approx(float(flat), abs=1e-6)


def test_per_layer_gate_takes_aligned_tensors_only() -> None:
    g_aux = [torch.tensor([2.0, 0.0]), torch.tensor([[0.0, -5.0]])]  # layer 1 with, layer 2 against
    out = promote(E, g_aux, 1.0, per_layer=True)
    assert [g.tolist() for g in out.grads] == [[3.0, 0.0], [[0.0, 2.0]]]
    assert out.aligned == 0.5
    assert promote(E, g_aux, 1.0).aligned == 0.0  # globally opposed: nothing added


def test_normalized_auxiliary_gradient_has_the_enhancement_norm() -> None:
    g_enh, g_aux = [torch.tensor([3.0, 0.0])], [torch.tensor([10.0, 10.0])]
    out = promote(g_enh, g_aux, 0.5, normalize=True)
    step_aux = out.grads[0] - g_enh[0]
    assert float(step_aux.norm()) == pytest.approx(0.5 * 3.0)
    assert out.norm_ratio == pytest.approx(200**0.5 / 3.0)
    opposed = promote(g_enh, [-g_aux[0]], 0.5, normalize=True)
    assert opposed.grads[0].tolist() == [3.0, 0.0] and opposed.aligned == 0.0
    zero = promote(g_enh, [torch.zeros(2)], 0.5, normalize=True, gated=False)
    assert zero.grads[0].tolist() == [3.0, 0.0]


def test_negative_weight_and_mismatch_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        promote(E, E, -1.0)
    with pytest.raises(ValueError, match="2 enhancement vs 1 auxiliary"):
        promote(E, E[:1], 1.0)


@pytest.fixture(scope="module")
def segmenter(ct_train: torch.Tensor) -> TinyUNet:
    cfg = SegmenterConfig(width=4, steps=40, patch_size=32)
    return train_segmenter(ct_train, tissue_labels(ct_train), seed=0, cfg=cfg).model


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


def _one_step(
    rule: StepRule, model: torch.nn.Module, lq: torch.Tensor, hq: torch.Tensor, lr: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The displacement of the parameters after one SGD step of ``rule`` from (a copy of)
    ``model``, and the step's metrics."""
    model = copy.deepcopy(model)
    before = _flat(list(model.parameters()))
    rule.bind(model, torch.device("cpu"), seed=0)
    out = rule.step(model, torch.optim.SGD(model.parameters(), lr=lr), lq, hq, F.l1_loss)
    return _flat(list(model.parameters())) - before, out.metrics


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gradprom_never_decreases_the_enhancement_loss_less_than_none(
    ct_train: torch.Tensor, segmenter: TinyUNet, seed: int
) -> None:
    """First-order decrease of L_enh after a step d: -<g_enh, d>; GradProm's >= the plain one,
    and the step GradProm takes is exactly g_enh (+ w g_aux when cos > 0), checked against
    gradients computed here on their own."""
    torch.manual_seed(seed)
    model = build_net("dncnn", width=8, depth=4)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(ct_train.shape[0], generator=gen)[:4]
    hq = ct_train[idx]
    lq = gaussian_noise(hq, seed)
    lr, w = 1e-2, 0.5
    params = list(model.parameters())
    enhanced = model(lq)
    g_enh = torch.autograd.grad(F.l1_loss(enhanced, hq), params, retain_graph=True)
    g_aux = torch.autograd.grad(segmentation_loss(segmenter(enhanced), tissue_labels(hq)), params)
    cos = flat_cosine(g_enh, g_aux)

    d_none, _ = _one_step(build_step_rule("none"), model, lq, hq, lr)
    d_prom, metrics = _one_step(GradPromRule(segmenter=segmenter, aux_weight=w), model, lq, hq, lr)
    d_sum, _ = _one_step(SumRule(segmenter=segmenter, aux_weight=w), model, lq, hq, lr)
    assert metrics["cos"] == pytest.approx(cos, abs=1e-5)

    ge, ga = _flat(list(g_enh)), _flat(list(g_aux))
    expected = ge + w * ga if cos > 0 else ge
    torch.testing.assert_close(d_prom, -lr * expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(d_sum, -lr * (ge + w * ga), rtol=1e-4, atol=1e-7)
    decrease_none = -float(ge.double() @ d_none.double())
    decrease_prom = -float(ge.double() @ d_prom.double())
    decrease_sum = -float(ge.double() @ d_sum.double())
    assert decrease_none == pytest.approx(lr * float(ge.double() @ ge.double()), rel=1e-4)
    assert decrease_prom >= decrease_none * (1 - 1e-5)
    if cos > 0:
        assert decrease_prom > decrease_none
    else:  # the naive sum is the one that can do worse
        assert decrease_sum < decrease_none


def test_an_opposed_auxiliary_gradient_is_dropped_on_a_real_batch(
    ct_train: torch.Tensor, segmenter: TinyUNet
) -> None:
    """Make the auxiliary task oppose the enhancement (labels of the *inverted* image), so the
    gate is exercised shut on real data: GradProm then takes exactly the plain step."""

    class Inverted(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(1.0 - x)

    torch.manual_seed(0)
    model = build_net("dncnn", width=8, depth=4)
    hq = ct_train[:4]
    lq = gaussian_noise(hq, 0)
    rule = GradPromRule(segmenter=Inverted(segmenter), aux_weight=1.0)
    d_prom, metrics = _one_step(rule, model, lq, hq, 1e-2)
    d_none, _ = _one_step(build_step_rule("none"), model, lq, hq, 1e-2)
    assert metrics["cos"] < 0 and metrics["aligned"] == 0.0
    torch.testing.assert_close(d_prom, d_none)


def _cfg(rule: str, **options: object) -> TrainConfig:
    return TrainConfig(
        net={"name": "dncnn", "width": 8, "depth": 3},
        steps=6,
        batch_size=4,
        patch_size=32,
        step_rule=rule,
        step_options=options,
    )


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return _flat(list(model.parameters()))


@pytest.mark.parametrize("rule", ["none", "sum", "gradprom"])
def test_each_rule_trains_end_to_end_on_real_ct(
    ct_train: torch.Tensor, segmenter: TinyUNet, rule: str
) -> None:
    options = {} if rule == "none" else {"segmenter": segmenter, "aux_weight": 0.1}
    a = train_enhancer(ct_train, None, _cfg(rule, **options), degrade=gaussian_noise)
    assert len(a.losses) == 6 and all(math.isfinite(v) for v in a.losses)
    if rule == "none":
        assert a.history == {}
        return
    assert set(a.history) == {"cos", "aligned", "norm_ratio", "aux_loss"}
    assert all(len(v) == 6 for v in a.history.values())
    assert all(-1.0 <= c <= 1.0 for c in a.history["cos"])
    assert set(a.history["aligned"]) <= {0.0, 1.0}
    if rule == "sum":
        assert a.history["aligned"] == [1.0] * 6
    else:
        expected = [1.0 if c > 0 else 0.0 for c in a.history["cos"]]
        assert a.history["aligned"] == expected
    b = train_enhancer(ct_train, None, _cfg(rule, **options), degrade=gaussian_noise)
    assert torch.equal(_weights(a.model), _weights(b.model))  # deterministic
    assert a.history == b.history


def test_frozen_segmenter_stays_put_and_the_callers_copy_is_never_touched(
    ct_train: torch.Tensor, segmenter: TinyUNet
) -> None:
    original = _weights(segmenter).clone()
    frozen = GradPromRule(segmenter=segmenter)
    train_enhancer(ct_train, None, _cfg("none"), degrade=gaussian_noise, step_rule=frozen)
    assert frozen.seg is not None and torch.equal(_weights(frozen.seg), original)
    online = GradPromRule(segmenter=segmenter, freeze_aux=False)
    train_enhancer(ct_train, None, _cfg("none"), degrade=gaussian_noise, step_rule=online)
    assert online.seg is not None and not torch.equal(_weights(online.seg), original)
    assert torch.equal(_weights(segmenter), original)


def test_config_alone_pretrains_a_segmenter_first(ct_train: torch.Tensor) -> None:
    cfg = _cfg("gradprom", pretrain_steps=3, aux={"width": 4, "lr": 3e-3})
    result = train_enhancer(ct_train, None, cfg, degrade=gaussian_noise)
    cos = result.history["cos"]
    assert all(math.isnan(c) for c in cos[:3]) and all(math.isfinite(c) for c in cos[3:])
    assert all(math.isfinite(v) for v in result.history["aux_loss"])
    assert 0.0 <= aligned_fraction(result.history) <= 1.0


def test_registered_and_options_checked() -> None:
    assert {"none", "sum", "gradprom"} <= set(STEP_RULES)
    with pytest.raises(ValueError, match="did you mean 'gradprom'"):
        TrainConfig(step_rule="gradprm")
    with pytest.raises(ValueError, match=r"aux_weight must be >= 0.*pretrain_steps must be >= 1"):
        build_step_rule("gradprom", aux_weight=-1.0, pretrain_steps=0)
    with pytest.raises(ValueError, match="n_classes=3 but 3 thresholds make 4 classes"):
        build_step_rule("sum", aux={"n_classes": 3})
    with pytest.raises(ValueError, match="inside the window"):
        build_step_rule("gradprom", window=(-100.0, 100.0))
