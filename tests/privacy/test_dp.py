"""DP building blocks: golden epsilon, sigma round trip, per-sample gradients vs references,
clipping, seeded noise, BatchNorm refusal, Poisson sampling and per-patient accounting."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.func import functional_call, grad, vmap

from medidd.config import ConfigError, load_config
from medidd.privacy.dp import (
    DPConfig,
    DPGradientSource,
    clip_per_sample,
    epsilon_spent,
    noise_multiplier_for,
    noisy_clipped_gradients,
    per_sample_gradients,
    poisson_sample,
    validate_model,
)

# Computed once with opacus 1.6.0, RDPAccountant (default orders), for sigma=1.0, q=0.01,
# 1000 steps, delta=1e-5. A change here means the accountant's maths changed.
GOLDEN_EPSILON = 2.1013652716430564


def _net() -> nn.Module:
    torch.manual_seed(0)  # the test owns the global RNG; the library never touches it
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)
    )


def _batch(b: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hq = torch.rand(b, 1, 12, 12, generator=g)
    return hq + 0.1 * torch.randn(hq.shape, generator=g), hq


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def test_golden_epsilon() -> None:
    accountant = RDPAccountant()
    for _ in range(1000):
        accountant.step(noise_multiplier=1.0, sample_rate=0.01)
    direct = accountant.get_epsilon(delta=1e-5)
    ours = epsilon_spent(1.0, 0.01, 1000, 1e-5)
    assert ours == pytest.approx(direct, rel=1e-12)
    assert ours == pytest.approx(GOLDEN_EPSILON, rel=1e-9)
    assert epsilon_spent(1.0, 0.01, 0, 1e-5) == 0.0
    assert epsilon_spent(2.0, 0.01, 1000, 1e-5) < ours  # more noise, less epsilon


@pytest.mark.parametrize(
    ("epsilon", "q", "steps"), [(1.0, 0.01, 1000), (4.0, 0.1, 300), (8.0, 0.25, 200)]
)
def test_noise_multiplier_round_trips(epsilon: float, q: float, steps: int) -> None:
    sigma = noise_multiplier_for(epsilon, 1e-5, q, steps)
    back = epsilon_spent(sigma, q, steps, 1e-5)
    assert back <= epsilon * (1 + 1e-9)
    assert back == pytest.approx(epsilon, rel=0.01)
    with pytest.raises(ValueError, match="did you mean 'rdp'"):
        noise_multiplier_for(epsilon, 1e-5, q, steps, accountant="rpd")


def test_per_sample_gradients_match_a_loop_and_torch_func() -> None:
    model = _net()
    lq, hq = _batch()
    ours = per_sample_gradients(model, lq, hq)
    params = list(model.parameters())
    per_sample = [
        torch.autograd.grad(_mse(model(x[None]), y[None]), params)
        for x, y in zip(lq, hq, strict=True)
    ]
    loop = [torch.stack(g) for g in zip(*per_sample, strict=True)]
    named = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _mse(functional_call(model, p, (x[None],)), y[None])

    func = vmap(grad(loss_one), in_dims=(None, 0, 0))(named, lq, hq)
    assert len(ours) == len(params)
    for o, lp, (name, _) in zip(ours, loop, model.named_parameters(), strict=True):
        torch.testing.assert_close(o, lp, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(o, func[name], rtol=1e-4, atol=1e-6)
    # the model is left clean: no per-sample fields, no .grad, no hooks
    assert all(p.grad is None and not hasattr(p, "grad_sample") for p in params)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_patches_of_one_slice_form_one_sample() -> None:
    model = _net()
    lq, hq = _batch(8)
    patches_lq, patches_hq = lq.reshape(4, 2, 1, 12, 12), hq.reshape(4, 2, 1, 12, 12)
    grouped = per_sample_gradients(model, patches_lq, patches_hq)
    flat = per_sample_gradients(model, lq, hq)
    for g, f in zip(grouped, flat, strict=True):
        assert g.shape[0] == 4
        torch.testing.assert_close(g, f.reshape(4, 2, *f.shape[1:]).mean(dim=1))


def test_clipping_bounds_every_sample_norm() -> None:
    grads = per_sample_gradients(_net(), *_batch(10))
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], 1).norm(dim=1)
    c = float(norms.median())
    clipped = clip_per_sample(grads, c)
    after = torch.stack([g.flatten(1).norm(dim=1) for g in clipped], 1).norm(dim=1)
    assert torch.all(after <= c * (1 + 1e-5))
    small = norms < c
    torch.testing.assert_close(after[small], norms[small])  # small samples untouched
    torch.testing.assert_close(after[~small], torch.full_like(after[~small], c), rtol=1e-5, atol=0)
    # direction is preserved
    for g, gc in zip(grads, clipped, strict=True):
        cos = nn.functional.cosine_similarity(g.flatten(1), gc.flatten(1), dim=1)
        torch.testing.assert_close(cos, torch.ones_like(cos))


def test_noisy_gradients_formula_and_seeding() -> None:
    model = _net()
    lq, hq = _batch(6)
    kwargs = {"max_grad_norm": 1e6, "noise_multiplier": 0.0, "expected_batch_size": 6.0}
    clean = noisy_clipped_gradients(model, lq, hq, generator=torch.Generator(), **kwargs)
    reference = torch.autograd.grad(_mse(model(lq), hq), list(model.parameters()))
    for c, r in zip(clean, reference, strict=True):  # no clipping, no noise: the mean-loss gradient
        torch.testing.assert_close(c, r, rtol=1e-4, atol=1e-7)

    def noisy(seed: int) -> list[torch.Tensor]:
        return noisy_clipped_gradients(
            model,
            lq,
            hq,
            max_grad_norm=0.5,
            noise_multiplier=1.2,
            expected_batch_size=3.0,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, c = noisy(7), noisy(7), noisy(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))
    assert all(not x.requires_grad for x in a)
    # the noise has std sigma * C / expected batch size on every coordinate
    clipped = clip_per_sample(per_sample_gradients(model, lq, hq), 0.5)
    signal = [g.sum(0) / 3.0 for g in clipped]
    residual = torch.cat([(x - s).flatten() for x, s in zip(a, signal, strict=True)])
    assert residual.numel() > 150
    assert residual.std().item() == pytest.approx(1.2 * 0.5 / 3.0, rel=0.2)


class _WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(x))


def test_batchnorm_is_refused_naming_the_layer() -> None:
    with pytest.raises(ValueError, match=r"layer 'norm' \(BatchNorm2d\)"):
        validate_model(_WithBatchNorm())
    with pytest.raises(ValueError, match="BatchNorm2d"):
        per_sample_gradients(_WithBatchNorm(), *_batch(2))
    validate_model(_net())  # GroupNorm is fine


def test_poisson_sampling_rate_and_seed() -> None:
    idx = poisson_sample(20000, 0.05, torch.Generator().manual_seed(3))
    assert abs(len(idx) - 1000) < 4 * (20000 * 0.05 * 0.95) ** 0.5
    assert torch.equal(idx, poisson_sample(20000, 0.05, torch.Generator().manual_seed(3)))
    assert torch.all(idx[1:] > idx[:-1])


def test_gradient_source_counts_steps_and_handles_empty_batches() -> None:
    lq, hq = _batch(10)
    model = _net()

    def two_patches(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.stack([x[..., :6, :6], x[..., 6:, 6:]], 1),
            torch.stack([y[..., :6, :6], y[..., 6:, 6:]], 1),
        )

    src = DPGradientSource(
        lq,
        hq,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.3,
        generator=torch.Generator().manual_seed(0),
        transform=two_patches,
    )
    for _ in range(5):
        grads = src.step(model)
        assert [g.shape for g in grads] == [p.shape for p in model.parameters()]
    assert src.steps == 5
    assert src.epsilon(1e-5) == pytest.approx(epsilon_spent(1.0, 0.3, 5, 1e-5))
    assert src.expected_batch_size == pytest.approx(3.0)
    # a sample rate so small the batch is empty: pure noise, still the right shapes
    empty = DPGradientSource(
        lq,
        hq,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=1e-9,
        generator=torch.Generator().manual_seed(0),
    )
    noise = empty.step(model)
    assert [g.shape for g in noise] == [p.shape for p in model.parameters()]
    assert all(torch.isfinite(g).all() for g in noise)


def test_dp_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = DPConfig()
    assert (cfg.enabled, cfg.accountant) == (False, "rdp")
    path = tmp_path / "dp.yaml"
    path.write_text("enabled: true\nepsilon: 4\ndelta: 1.0e-6\nmax_grad_norm: 0.5\n")
    loaded = load_config(DPConfig, path)
    assert loaded.epsilon == 4.0 and loaded.max_grad_norm == 0.5
    with pytest.raises(ConfigError, match="epsilon"):
        load_config(DPConfig, path, ["epsilonn=3"])
    with pytest.raises(ConfigError, match="accountant"):
        load_config(DPConfig, path, ["accountant=prv"])
    with pytest.raises(ConfigError, match="epsilon"):
        load_config(DPConfig, path, ["epsilon=-1"])
