"""The downstream trainer: determinism, data modes, step-rule hook, and real-CT denoising."""

from __future__ import annotations

import math

import pytest
import torch

from medidd.train import (
    StepOutput,
    StepRule,
    TrainConfig,
    evaluate_enhancer,
    train_enhancer,
)
from medidd.train.losses import LossFn
from tests.train.ct_data import gaussian_noise


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "net": {"name": "dncnn", "width": 8, "depth": 3},
        "steps": 12,
        "batch_size": 4,
        "patch_size": 24,
        "lr": 1e-3,
    }
    return TrainConfig.model_validate(base | kw)


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in model.parameters()])


def test_same_seed_same_weights_different_seed_different(ct_train: torch.Tensor) -> None:
    a = train_enhancer(ct_train, None, _cfg(seed=1), degrade=gaussian_noise)
    b = train_enhancer(ct_train, None, _cfg(seed=1), degrade=gaussian_noise)
    c = train_enhancer(ct_train, None, _cfg(seed=2), degrade=gaussian_noise)
    assert torch.equal(_weights(a.model), _weights(b.model))
    assert a.losses == b.losses
    assert not torch.equal(_weights(a.model), _weights(c.model))
    assert a.steps == len(a.losses) == 12 and a.seconds > 0


@pytest.mark.parametrize("net", ["redcnn", "srcnn", "edsr", "unet"])
def test_every_net_trains_deterministically(ct_train: torch.Tensor, net: str) -> None:
    cfg = _cfg(net={"name": net, "width": 8, "depth": 2}, steps=3)
    a = train_enhancer(ct_train, None, cfg, degrade=gaussian_noise)
    b = train_enhancer(ct_train, None, cfg, degrade=gaussian_noise)
    assert torch.equal(_weights(a.model), _weights(b.model))
    assert all(math.isfinite(v) for v in a.losses)


def test_global_state_is_left_as_found(ct_train: torch.Tensor) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    before = torch.are_deterministic_algorithms_enabled()
    train_enhancer(ct_train, None, _cfg(steps=2), degrade=gaussian_noise)
    assert torch.equal(torch.rand(3), expected)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_fixed_pairs_and_degrade_callable(ct_train: torch.Tensor) -> None:
    lq = gaussian_noise(ct_train, seed=9)
    fixed = train_enhancer(ct_train, lq, _cfg(steps=4))
    assert len(fixed.losses) == 4
    with pytest.raises(ValueError, match="exactly one of lq"):
        train_enhancer(ct_train, lq, _cfg(), degrade=gaussian_noise)
    with pytest.raises(ValueError, match="exactly one of lq"):
        train_enhancer(ct_train, None, _cfg())
    with pytest.raises(ValueError, match="differs from hq"):
        train_enhancer(ct_train, lq[:, :, :32], _cfg())


def test_lq_is_redrawn_every_epoch_only_when_asked(ct_train: torch.Tensor) -> None:
    seen: list[int] = []

    def recording(hq: torch.Tensor, seed: int) -> torch.Tensor:
        seen.append(seed)
        return gaussian_noise(hq, seed)

    # 8 images, batch 4 -> an epoch is 2 steps; 6 steps -> 3 draws of 8 images
    train_enhancer(ct_train, None, _cfg(steps=6, redraw_lq=True), degrade=recording)
    assert len(seen) == 24 and len(set(seen)) == 24
    seen.clear()
    train_enhancer(ct_train, None, _cfg(steps=6, redraw_lq=False), degrade=recording)
    assert len(seen) == 8


#: One HU in the [-1000, 1000] HU window is 5e-4 in normalised units; CT values are integers in
#: HU, so two draws that agree to 0.05 HU (2.5e-5) are the same image. Batched and per-image
#: Radon/FBP sum the same terms in another order (another thread split), which moves float32
#: results by a few ulps (~1e-7 .. 1e-6), never by that much: equality is asserted to this
#: tolerance, not bit for bit (a bitwise assert failed on another machine's thread count).
HU_TOLERANCE = 0.05 / 2000


def test_batched_lq_draw_equals_image_by_image(ct_train: torch.Tensor) -> None:
    """A Degradation re-draws the whole set in one call; the LQ must be what a per-image loop
    with the same seeds gives (so training is independent of how LQ is batched)."""
    from medidd.degrade import DegradationSpec, build_degradation, draw_lq
    from medidd.seeds import derive

    op = build_degradation(DegradationSpec(kind="ct_lowdose", dose=0.25, n_angles=60),
                           window=(-1000.0, 1000.0))
    batched = draw_lq(ct_train, op, 5, "train", 3)
    looped = torch.cat([op(ct_train[i : i + 1], derive(5, "train", 3, i))
                        for i in range(len(ct_train))])
    as_callable = draw_lq(ct_train, lambda x, s: op(x, s), 5, "train", 3)
    in_pieces = torch.cat([draw_lq(ct_train[:3], op, 5, "train", 3, chunk=2),
                           draw_lq(ct_train[3:], op, 5, "train", 3, start=3)])
    for other in (looped, as_callable, in_pieces):
        torch.testing.assert_close(batched, other, atol=HU_TOLERANCE, rtol=0)
    # a different draw is a different image (the tolerance is far below the noise)
    assert (batched - draw_lq(ct_train, op, 5, "train", 4)).abs().max() > 100 * HU_TOLERANCE


def test_training_can_start_from_given_weights(ct_train: torch.Tensor) -> None:
    first = train_enhancer(ct_train, None, _cfg(steps=4), degrade=gaussian_noise)
    start = {k: v.clone() for k, v in first.model.state_dict().items()}
    zero = train_enhancer(ct_train, None, _cfg(steps=1, lr=1e-12), degrade=gaussian_noise,
                          init_state=start)
    torch.testing.assert_close(_weights(zero.model), _weights(first.model))
    fresh = train_enhancer(ct_train, None, _cfg(steps=1, lr=1e-12), degrade=gaussian_noise)
    assert not torch.allclose(_weights(fresh.model), _weights(first.model))


def test_degrade_must_keep_the_batch(ct_train: torch.Tensor) -> None:
    def shrink(hq: torch.Tensor, seed: int) -> torch.Tensor:  # an SR operator's small image
        return hq[..., ::2, ::2]

    def drop(hq: torch.Tensor, seed: int) -> torch.Tensor:
        return hq[:0]

    assert train_enhancer(ct_train, None, _cfg(steps=1), degrade=shrink).steps == 1  # resampled
    with pytest.raises(ValueError, match="must keep the batch"):
        train_enhancer(ct_train, None, _cfg(), degrade=drop)


@pytest.mark.parametrize("loss", ["l1", "l2", "l1+ssim"])
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_losses_schedules_whole_images(ct_train: torch.Tensor, loss: str, schedule: str) -> None:
    calls: list[tuple[int, float]] = []
    cfg = _cfg(loss=loss, schedule=schedule, patch_size=None, steps=3, batch_size=2)
    result = train_enhancer(
        ct_train, None, cfg, degrade=gaussian_noise, progress=lambda s, v: calls.append((s, v))
    )
    assert [s for s, _ in calls] == [1, 2, 3]
    assert [v for _, v in calls] == result.losses
    assert not result.model.training


def test_config_errors_suggest_the_fix() -> None:
    with pytest.raises(ValueError, match="did you mean 'l1'"):
        _cfg(loss="l11")
    with pytest.raises(ValueError, match="did you mean 'cosine'"):
        _cfg(schedule="cosin")
    with pytest.raises(ValueError, match="did you mean 'none'"):
        _cfg(step_rule="nne")
    with pytest.raises(ValueError, match="extra"):
        TrainConfig.model_validate({"stpes": 3})


def test_patch_larger_than_the_images(ct_train: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="larger than the training images"):
        train_enhancer(ct_train, None, _cfg(patch_size=65), degrade=gaussian_noise)


class _CountingRule(StepRule):
    """A custom rule: the plain step plus a reported extra, as GradProm will do."""

    def __init__(self) -> None:
        self.bound = False

    def bind(self, model: torch.nn.Module, device: torch.device, seed: int) -> None:
        self.bound = True

    def step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lq: torch.Tensor,
        hq: torch.Tensor,
        loss_fn: LossFn,
    ) -> StepOutput:
        out = super().step(model, optimizer, lq, hq, loss_fn)
        return StepOutput(out.loss, {"batch": float(lq.shape[0])})


def test_a_custom_step_rule_plugs_in_without_changing_results(ct_train: torch.Tensor) -> None:
    rule = _CountingRule()
    custom = train_enhancer(ct_train, None, _cfg(steps=5), degrade=gaussian_noise, step_rule=rule)
    plain = train_enhancer(ct_train, None, _cfg(steps=5), degrade=gaussian_noise)
    assert rule.bound
    assert custom.history == {"batch": [4.0] * 5}
    assert torch.equal(_weights(custom.model), _weights(plain.model))


def test_training_on_real_ct_beats_the_noisy_input(
    ct_train: torch.Tensor, ct_heldout: torch.Tensor
) -> None:
    """DnCNN-4/16, 200 steps on 8 lung1 slices; held-out lung2 slices improve by > 1 dB."""
    cfg = TrainConfig.model_validate(
        {
            "net": {"name": "dncnn", "width": 16, "depth": 4},
            "steps": 200,
            "batch_size": 8,
            "patch_size": 32,
            "lr": 2e-3,
            "seed": 0,
        }
    )
    result = train_enhancer(ct_train, None, cfg, degrade=gaussian_noise)
    lq = gaussian_noise(ct_heldout, seed=12345)
    ev = evaluate_enhancer(result.model, ct_heldout, lq, batch_size=4)
    assert ev.n == ct_heldout.shape[0]
    assert ev.psnr - ev.psnr_lq > 1.0
    assert ev.ssim > ev.ssim_lq
    assert sum(result.losses[-20:]) < sum(result.losses[:20])
