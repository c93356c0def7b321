"""Baseline distillation methods on a real CT patient (lung1, 64 px): the interface contract,
determinism, what each family must do (selection ships real slices, matching lowers its loss,
noise init ships no real slice) and the bad-input errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medidd.degrade import draw_lq
from medidd.distill import DistillConfig, DistillContext, Prior, available_methods
from medidd.distill.base import Distilled, method_factory
from medidd.distill.baselines import DMOptions, IDCOptions, TripleDOptions
from medidd.distill.baselines.gradient_matching import prior_at
from medidd.distill.baselines.idc import assign_with_quotas, char_fn, fourier_filters, ncfd
from medidd.distill.baselines.selection import herding_order, kcenter_order
from medidd.distill.baselines.tripled import local_entropy, select_complex
from medidd.io.volume import Volume
from medidd.preprocess.pipeline import PreprocessConfig, preprocess_volume
from medidd.preprocess.slices import SliceSet

SIZE = 64
BASELINES = ("full", "random", "herding", "kcenter", "tripled", "dc_real", "dc_noise",
             "pixel_gm", "dm", "idc")
SELECTION = ("random", "herding", "kcenter")
STOCHASTIC = ("random", "tripled", "dc_real", "dc_noise", "pixel_gm", "dm", "idc")
REAL_INIT = ("random", "herding", "kcenter", "tripled", "dc_real")
SMALL_MATCHING = {"iterations": 2, "outer_loop": 2, "inner_steps": 1, "patch_size": 24,
                  "real_batch": 4, "syn_patches": 4, "net_width": 8, "lfd_features": 8,
                  "lfd_frequencies": 8, "lfd_kernel": 5}


def degrade(hq: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator(device=hq.device).manual_seed(seed)
    return hq + 0.05 * torch.randn(hq.shape, generator=g, device=hq.device)


def load_patient(path: Path, key: str) -> SliceSet:
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.ReadImage(str(path))
    sx, sy, sz = img.GetSpacing()
    data = sitk.GetArrayFromImage(img).astype(np.float32)
    vol = Volume(data, (sz, sy, sx), "CT", key, "s-0")
    return preprocess_volume(vol, PreprocessConfig(size=SIZE, max_slices_per_volume=16))


@pytest.fixture(scope="module")
def patient(real_samples: Path) -> SliceSet:
    return load_patient(real_samples / "ct" / "lung1.nrrd", "p-1")


@pytest.fixture(scope="module")
def prior(real_samples: Path) -> Prior:
    """A medoid-like prior from another patient: 4 of lung2's slices at their z."""
    other = load_patient(real_samples / "ct" / "lung2.nrrd", "p-2")
    idx = torch.linspace(0, len(other) - 1, 4).round().long()
    return Prior(other.images[idx].clone(), torch.as_tensor(other.z)[idx].clone().float(),
                 "medoid", local_data=True)


def make(name: str, matching: dict[str, Any] | None = None, **opts: Any) -> Any:
    cfg = DistillConfig.model_validate({"method": name, "ipc": 2,
                                        "matching": matching or SMALL_MATCHING})
    factory = method_factory(name)
    if name == "dm":
        return factory(cfg, DMOptions(steps=opts.get("steps", 4), real_patches=8, syn_patches=4))
    if name == "idc":
        return factory(cfg, IDCOptions(steps=opts.get("steps", 6), warmup=2, reassign_every=2,
                                       real_patches=8, frequencies=16, features=8))
    if name == "tripled":
        return factory(cfg, TripleDOptions(steps=opts.get("steps", 3), cnn_depth=3,
                                           real_patches=4, syn_patches=4))
    return factory(cfg)


def run(name: str, patient: SliceSet, prior: Prior | None, *, seed: int = 0, ipc: int = 2,
        **kw: Any) -> Distilled:
    ctx = DistillContext(ipc=ipc, degrade=degrade, seed=seed, prior=prior)
    return make(name, **kw).distill(patient, ctx)


def test_every_baseline_is_registered() -> None:
    assert set(BASELINES) <= set(available_methods())


@pytest.mark.parametrize("name", BASELINES)
def test_contract(name: str, patient: SliceSet, prior: Prior) -> None:
    method = make(name)
    assert method.name == name
    assert method.ships_real_slices == (name in ("full", *SELECTION))
    assert method.needs_prior == (name == "pixel_gm")
    out = run(name, patient, prior)
    k = len(patient) if name == "full" else 2
    assert out.hq.shape == (k, 1, SIZE, SIZE) and out.lq.shape == out.hq.shape
    assert torch.isfinite(out.hq).all() and torch.isfinite(out.lq).all()
    assert float(out.hq.min()) >= 0.0 and float(out.hq.max()) <= 1.0
    assert torch.equal(out.lq, draw_lq(out.hq, degrade, out.lq_seed))


@pytest.mark.parametrize("name", BASELINES)
def test_deterministic_in_seed(name: str, patient: SliceSet, prior: Prior) -> None:
    a, b = run(name, patient, prior, seed=3), run(name, patient, prior, seed=3)
    assert torch.equal(a.hq, b.hq) and torch.equal(a.lq, b.lq)
    c = run(name, patient, prior, seed=4)
    assert torch.equal(a.hq, c.hq) != (name in STOCHASTIC)


@pytest.mark.parametrize("name", ("full", *SELECTION))
def test_selection_ships_exact_real_slices(name: str, patient: SliceSet, prior: Prior) -> None:
    out = run(name, patient, prior, ipc=3)
    real = torch.as_tensor(patient.images).as_subclass(torch.Tensor)
    for img in out.hq:
        assert any(torch.equal(img, r) for r in real)
    flat = out.hq.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == len(flat)  # distinct slices


def test_herding_and_kcenter_pick_differently(patient: SliceSet) -> None:
    h, k = run("herding", patient, None, ipc=3), run("kcenter", patient, None, ipc=3)
    assert not torch.equal(h.hq, k.hq)


@pytest.mark.parametrize("name", ("dc_noise", "dc_real", "pixel_gm", "dm", "idc"))
def test_matching_lowers_its_loss(name: str, patient: SliceSet, prior: Prior) -> None:
    """12 matching steps lower the probe loss on average over three seeds (one short run of a
    stochastic optimisation may go up: pixel_gm with seed 0 ends 0.6% above its start)."""
    matching = {**SMALL_MATCHING, "iterations": 4, "outer_loop": 3, "lr_syn": 0.02}
    outs = [run(name, patient, prior, matching=matching, steps=30, seed=s) for s in range(3)]
    assert sum(o.info["probe_end"] for o in outs) < sum(o.info["probe_start"] for o in outs)


def test_dc_noise_ships_no_real_slice(patient: SliceSet) -> None:
    out = run("dc_noise", patient, None)
    real = torch.as_tensor(patient.images).as_subclass(torch.Tensor).flatten(1)
    for img in out.hq.flatten(1):
        a = img - img.mean()
        b = real - real.mean(dim=1, keepdim=True)
        ncc = (b @ a) / (b.norm(dim=1) * a.norm() + 1e-8)
        assert float(ncc.max()) < 0.95
        assert float((real - img).abs().amax(dim=1).min()) > 0.05


@pytest.mark.parametrize("name", REAL_INIT)
def test_ipc_above_slice_count_is_a_clear_error(name: str, patient: SliceSet) -> None:
    few = SliceSet(patient.images[:3], patient.z[:3], "p-1", "CT", patient.window)
    with pytest.raises(ValueError, match=r"ipc=5 .* 3 slices"):
        run(name, few, None, ipc=5)


def test_noise_init_methods_accept_ipc_above_slice_count(patient: SliceSet) -> None:
    few = SliceSet(patient.images[:2], patient.z[:2], "p-1", "CT", patient.window)
    assert run("dc_noise", few, None, ipc=3).hq.shape[0] == 3


def test_pixel_gm_needs_a_matching_prior(patient: SliceSet, prior: Prior) -> None:
    with pytest.raises(ValueError, match="needs the shared prior"):
        run("pixel_gm", patient, None)
    small = Prior(prior.images[:, :, :32, :32], prior.z, "mean", False)
    with pytest.raises(ValueError, match=r"preprocess\.size"):
        run("pixel_gm", patient, small)


def test_progress_is_reported(patient: SliceSet) -> None:
    calls: list[tuple[int, int, float]] = []
    ctx = DistillContext(ipc=2, degrade=degrade, seed=0,
                         progress=lambda s, t, v: calls.append((s, t, v)))
    make("dc_noise").distill(patient, ctx)
    assert [c[0] for c in calls] == [1, 2, 3, 4] and all(c[1] == 4 for c in calls)


def test_options_reject_typos() -> None:
    with pytest.raises(ValueError, match="did you mean 'noise'"):
        DMOptions(init="noize")
    with pytest.raises(ValueError):
        IDCOptions.model_validate({"stepz": 3})


# --- the maths under the methods ---------------------------------------------------------


def test_herding_matches_brute_force_greedy() -> None:
    feats = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    chosen: list[int] = []
    for t in range(1, 5):
        best = min((i for i in range(12) if i not in chosen),
                   key=lambda i: float((feats[[*chosen, i]].mean(0) - feats.mean(0)).norm()))
        chosen.append(best)
        assert herding_order(feats, t) == chosen


def test_kcenter_covers_far_points_first() -> None:
    feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 5.0], [0.2, 0.1]])
    assert kcenter_order(feats, 3) == [4, 2, 3]  # 4 is closest to the mean (2.06, 1.02)


def test_local_entropy_and_complexity_selection() -> None:
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 1, 32, 32), 0.4)
    edge = torch.zeros(1, 1, 32, 32)
    edge[..., 16:] = 1.0
    noisy = torch.rand(1, 1, 32, 32, generator=g)
    e = local_entropy(torch.cat([flat, edge, noisy]))
    assert float(e[0]) == 0.0 and 0.0 < float(e[1]) < float(e[2]) <= 4.0
    assert select_complex(torch.tensor([5.0, 1.0, 4.0, 3.0, 0.0, 2.0]), torch.arange(6.0), 2,
                          0.5) == [0, 3]


def test_ncfd_is_zero_for_equal_and_grows_with_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 4, generator=g)
    freqs = torch.randn(32, 4, generator=g)
    base = char_fn(x, freqs)
    d_same = float(ncfd(base, base, 0.5))
    d_small = float(ncfd(base, char_fn(x + 0.2, freqs), 0.5))
    d_big = float(ncfd(base, char_fn(x + 1.0, freqs), 0.5))
    assert d_same < 0.01 < d_small < d_big


def test_fourier_filters_are_distinct_unit_filters() -> None:
    # C' = 2 * 3 * 3 = 18 orthonormal real-DFT filters (10 cosine + 8 sine rows)
    f = fourier_filters(width=2, kernel=3, n=18, seed=1).flatten(1)
    assert torch.allclose(f @ f.t(), torch.eye(18), atol=1e-5)
    with pytest.raises(ValueError, match=r"idc\.features=19"):
        fourier_filters(width=2, kernel=3, n=19, seed=1)
    with pytest.raises(ValueError, match=r"idc\.features"):
        fourier_filters(width=1, kernel=1, n=4, seed=0)


def test_assignment_respects_quotas() -> None:
    dist = torch.tensor([[0.0, 1.0], [0.1, 1.0], [0.2, 0.3]])
    assert assign_with_quotas(dist, torch.tensor([2, 1])).tolist() == [0, 0, 1]


def test_prior_interpolates_along_z() -> None:
    p = Prior(torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]), torch.tensor([0.0, 1.0]),
              "mean", False)
    out = prior_at(p, 2, (4, 4))
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([0.25, 0.75]))


def test_runs_with_the_library_degradation(patient: SliceSet) -> None:
    """The task operator of medidd.degrade (CT SR x2) in place of the test noise."""
    from medidd.degrade import build_degradation, default_spec

    op = build_degradation(default_spec("sr", "CT"), patient.window)
    ctx = DistillContext(ipc=2, degrade=op, seed=0)
    out = make("dc_real").distill(patient, ctx)
    assert out.hq.shape == (2, 1, SIZE, SIZE)
    assert torch.allclose(out.lq, draw_lq(out.hq, op, out.lq_seed))
    assert torch.isfinite(out.lq).all() and not torch.equal(out.lq, out.hq)
