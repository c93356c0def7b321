"""SPG + patient-aware matching (our implementation of seed 000), and the prior-only ablation.

For patient ``i`` and each prior slice ``P_k`` at position ``z_k``, a small generator ``G_phi``
(one per patient, last layer zero-initialised so that training starts at the prior) produces

    S_ik = clip(P_k + a * tanh(G_phi(P_k, z_k, n_k) - mean), 0, 1)

where ``n_k`` are fixed seeded noise maps. ``phi`` is fitted by minimising

    L = GM(f_theta; real pairs of patient i, synthetic pairs)      (objective gm)
      + w_lfd * LFD(real HQ patches, S)                              (objective lfd)
      + w_struct * structure(S, P)

with a fresh matching network ``f_theta`` every outer iteration, trained a few inner steps on
the synthetic pairs in between (dataset-condensation schedule). ``GM`` is the layer-wise cosine
distance, ``LFD`` the characteristic-function distance of local random-filter responses
(:mod:`medidd.distill.matching`), and ``structure`` keeps ``S`` anatomically the prior (by
default only its low frequencies, leaving the generator free to add realistic texture).
Only patient ``i``'s real slices enter ``L``.

Example:
    >>> from medidd.distill.config import DistillConfig, MatchingConfig, SPGConfig
    >>> SPGMatching(DistillConfig()).needs_prior
    True
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from medidd.degrade.draw import draw_lq
from medidd.distill.base import DistillContext, Distilled, finish, register_method
from medidd.distill.config import DistillConfig, MatchingConfig, SPGConfig
from medidd.distill.matching import (
    LocalFeatureBank,
    fresh_matching_net,
    gm_distance,
    lfd_loss,
    net_gradients,
    pair_loss,
    random_patches,
)
from medidd.distill.trajectory import (
    Trajectory,
    expert_trajectories,
    start_window,
    trajectory_loss,
)
from medidd.preprocess.slices import SliceSet
from medidd.prior.base import Prior, crop_where_structure_is
from medidd.prior.fit import fit_intensity, fit_to_size
from medidd.seeds import derive

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from medidd.privacy.dp import DPGradientSource


class SPGGenerator(nn.Module):
    """``G_phi``: dilated conv net from (prior, z map, noise maps) to a residual, zero at init.

    Example:
        >>> g = SPGGenerator(width=8, depth=3, noise_channels=1)
        >>> p = torch.rand(2, 1, 16, 16)
        >>> g(p, torch.tensor([0.2, 0.8]), torch.zeros(2, 1, 16, 16)).abs().max().item()
        0.0
    """

    def __init__(self, width: int, depth: int, noise_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(2 + noise_channels, width, 3, padding=1), nn.ReLU()]
        for i in range(depth - 2):
            d = 2 ** (i % 3)
            layers += [nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.ReLU()]
        last = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, prior: torch.Tensor, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        zmap = z.view(-1, 1, 1, 1).to(prior).expand_as(prior)
        return self.net(torch.cat([prior, zmap, noise], dim=1))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def structure_loss(
    syn: torch.Tensor, prior: torch.Tensor, kind: str, sigma: float = 3.0
) -> torch.Tensor:
    """How far ``syn`` strays from the prior's structure (0 when equal).

    ``gradient``: L1 between image gradients; ``ssim``: 1 - SSIM (MONAI); ``lowpass``: MSE
    between Gaussian-blurred images (sigma in pixels); ``none``: 0.
    """
    if kind == "none":
        return syn.new_zeros(())
    if kind == "gradient":
        sy, sx = _image_gradients(syn)
        py, px = _image_gradients(prior)
        return (sy - py).abs().mean() + (sx - px).abs().mean()
    if kind == "ssim":
        from monai.losses import SSIMLoss

        return SSIMLoss(spatial_dims=2, data_range=1.0)(syn, prior)
    return F.mse_loss(_gaussian_blur(syn, sigma), _gaussian_blur(prior, sigma)) * 100.0


def _one_patch_per_slice(
    size: int, generator: torch.Generator
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A transform cropping one random patch per sampled slice (the DP unit stays a slice)."""

    def crop(lq: torch.Tensor, hq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = hq.shape
        s = min(size, h, w)
        ys = torch.randint(0, h - s + 1, (n,), generator=generator).tolist()
        xs = torch.randint(0, w - s + 1, (n,), generator=generator).tolist()
        lq_p = [lq[i, :, y : y + s, x : x + s] for i, (y, x) in enumerate(zip(ys, xs, strict=True))]
        hq_p = [hq[i, :, y : y + s, x : x + s] for i, (y, x) in enumerate(zip(ys, xs, strict=True))]
        if n == 0:
            return lq[:, :, :s, :s], hq[:, :, :s, :s]
        return torch.stack(lq_p), torch.stack(hq_p)

    return crop


def _dp_source(
    real_img: torch.Tensor, real_lq: torch.Tensor, cfg: DistillConfig, seed: int
) -> DPGradientSource:
    """The patient's DP real-gradient source, noise calibrated to ``cfg.dp.epsilon``."""
    from medidd.privacy.dp import DPGradientSource, noise_multiplier_for

    m, dp = cfg.matching, cfg.dp
    q = min(1.0, m.real_batch / real_img.shape[0])
    steps = m.iterations * m.outer_loop * len(m.nets)  # one release per net per step
    sigma = noise_multiplier_for(dp.epsilon, dp.delta, q, steps)
    g = torch.Generator().manual_seed(derive(seed, "dp"))
    return DPGradientSource(
        real_lq.cpu(),
        real_img.cpu(),
        noise_multiplier=sigma,
        max_grad_norm=dp.max_grad_norm,
        sample_rate=q,
        generator=g,
        transform=_one_patch_per_slice(m.patch_size, g),
    )


def spg_residual(out: torch.Tensor, spg: SPGConfig) -> torch.Tensor:
    """The residual added to the prior from the generator's raw output ``out`` (N, 1, H, W):
    centred per image (``spg.centre``), bounded by ``residual_scale * tanh``, high-passed
    (``residual: highpass``).

    Without centring, a bias that drifts into tanh's flat tail makes the residual a constant
    the high-pass removes, with gradients exactly 0: the generator is dead for good (seen on 3
    of 4 real CT patients).

    Example:
        >>> from medidd.distill.config import SPGConfig
        >>> out = torch.full((1, 1, 16, 16), 50.0, requires_grad=True)
        >>> w = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> (spg_residual(out, SPGConfig(centre=False)) * w).sum().backward()
        >>> out.grad.abs().max().item()  # saturated: nothing can move it again
        0.0
        >>> (spg_residual(out, SPGConfig()) * w).sum().backward()
        >>> bool(out.grad.abs().max() > 0)
        True
    """
    if spg.centre:
        out = out - out.mean(dim=(-2, -1), keepdim=True)
    r = spg.residual_scale * torch.tanh(out)
    if spg.residual == "highpass":
        r = r - _gaussian_blur(r, spg.lowpass_sigma)
    return r


def _matching_net(m: MatchingConfig, name: str, seed: int, it: int, dev: torch.device
                  ) -> nn.Module:
    """Outer iteration ``it``'s fresh matching net of architecture ``name``."""
    tag = derive(seed, "net", it) if name == "plain" else derive(seed, "net", name, it)
    return fresh_matching_net(m.net_width, m.net_depth, tag, dev, name)


def _take_prior(prior: Prior | None, ipc: int, name: str) -> Prior:
    if prior is None:
        raise ValueError(f"method '{name}' needs a prior; set prior.kind (mean, medoid or atlas)")
    if len(prior) != ipc:
        raise ValueError(f"method '{name}': the prior has {len(prior)} slices but ipc={ipc}")
    return prior


def patient_prior(
    cfg: DistillConfig, real: SliceSet, ctx: DistillContext, name: str
) -> tuple[Prior, dict[str, float]]:
    """The shared prior made this patient's: fitted to its body size when ``prior.fit_size``
    and the images are CT (:mod:`medidd.prior.fit`), cut to its most structured squares for
    patch packages (``patches.size``); returns the prior and what was fitted."""
    prior = _take_prior(ctx.prior, ctx.ipc, name)
    fitted: dict[str, float] = {}
    if cfg.prior.fit_size and real.modality == "CT":
        prior, fitted = fit_to_size(prior, real.images, real.window)
    if cfg.prior.fit_intensity and real.modality == "MR":
        prior, more = fit_intensity(prior, real.images)
        fitted |= more
    if cfg.patches.size is not None:
        prior = crop_where_structure_is(prior, cfg.patches.size)
    return prior, fitted


@register_method("prior_only")
class PriorOnly:
    """Ablation: ship the prior itself (no optimisation, nothing patient-specific)."""

    name = "prior_only"
    ships_real_slices = False
    needs_prior = True

    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg

    def distill(self, real: SliceSet, ctx: DistillContext) -> Distilled:
        prior, fitted = patient_prior(self.cfg, real, ctx, self.name)
        return finish(prior.images.clone(), ctx, {"steps": 0.0, **fitted})


@register_method("spg_gm")
class SPGMatching:
    """SPG generator fitted by patient-aware matching (see the module docstring)."""

    name = "spg_gm"
    ships_real_slices = False
    needs_prior = True

    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg

    def distill(self, real: SliceSet, ctx: DistillContext) -> Distilled:
        m, spg = self.cfg.matching, self.cfg.spg
        prior, fitted = patient_prior(self.cfg, real, ctx, self.name)
        dev = ctx.device
        t0 = time.perf_counter()
        gen_rng = torch.Generator().manual_seed(ctx.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            gen = SPGGenerator(spg.width, spg.depth, spg.noise_channels).to(dev)
        p_img = prior.images.to(dev)
        p_z = prior.z.to(dev)
        noise = torch.randn((ctx.ipc, spg.noise_channels, *p_img.shape[-2:]), generator=gen_rng).to(
            dev
        )
        bank = LocalFeatureBank(
            m.lfd_features, m.lfd_kernel, m.lfd_frequencies, derive(ctx.seed, "lfd-bank")
        ).to(dev)
        opt = torch.optim.Adam(gen.parameters(), lr=m.lr_syn)
        real_img = real.images.to(dev)
        degrade = ctx.matching_degrade
        use_gm, use_lfd, use_tm = (t in m.terms for t in ("gm", "lfd", "tm"))
        dp_src = None
        if self.cfg.dp.enabled:
            if use_lfd or use_tm:
                raise ValueError(
                    "dp.enabled needs matching.objective: gm (the lfd term reads the real images "
                    "directly, tm's expert trajectories are trained on them without noise, both "
                    "outside the DP mechanism); set matching.objective=gm"
                )
            if prior.local_data:
                logger.warning(
                    "DP distillation from a '%s' prior: the prior is computed from local "
                    "patients without DP, so the guarantee does not cover it "
                    "(use prior.kind=atlas)",
                    prior.kind,
                )
            with torch.no_grad():
                real_lq = draw_lq(real_img, degrade, ctx.seed, "dp-real-lq")
            dp_src = _dp_source(real_img, real_lq, self.cfg, ctx.seed)

        # the residual lives inside the body: in air (prior ~ 0) the clip would half-rectify
        # a zero-mean texture into bright speckles that no real HQ image has
        body = _gaussian_blur((p_img > 0.02).float(), 1.0)

        def synth() -> torch.Tensor:
            return (p_img + body * spg_residual(gen(p_img, p_z, noise), spg)).clamp(0, 1)

        tm = self.cfg.trajectory
        trajs: dict[str, list[Trajectory]] = {}
        log_lr = torch.tensor(math.log(tm.expert_lr), device=dev)
        window = (0, 0)
        if use_tm:
            for traj in expert_trajectories(
                m.nets, m.net_width, m.net_depth, real_img, degrade, tm,
                patch=m.patch_size, batch=m.real_batch, seed=derive(ctx.seed, "tm"), device=dev,
            ):
                trajs.setdefault(traj.name, []).append(traj)
            window = start_window(tm, ctx.ipc)
            if tm.learn_lr:
                log_lr.requires_grad_(True)
                opt.add_param_group({"params": [log_lr], "lr": tm.lr_lr})

        total = m.iterations * m.outer_loop
        step = 0
        first = last = 0.0
        for it in range(m.iterations):
            nets = [_matching_net(m, name, ctx.seed, it, dev) for name in m.nets] if use_gm else []
            net_opts = [torch.optim.SGD(n.parameters(), lr=m.lr_net, momentum=0.5) for n in nets]
            for _ in range(m.outer_loop):
                step_seed = derive(ctx.seed, "step", step)
                syn = synth()
                pick = torch.randint(0, len(real), (m.real_batch,), generator=gen_rng)
                r_hq = real_img[pick.to(dev)]
                r_lq = degrade(r_hq, step_seed) if use_gm else r_hq
                r_hq_p, r_lq_p = random_patches([r_hq, r_lq], m.real_batch, m.patch_size, gen_rng)
                loss = syn.new_zeros(())
                if use_gm:
                    s_lq = degrade(syn, derive(step_seed, "syn-lq"))
                    s_hq_p, s_lq_p = random_patches(
                        [syn, s_lq], m.syn_patches, m.patch_size, gen_rng
                    )
                    for net in nets:
                        if dp_src is not None:
                            g_real = [g.to(dev) for g in dp_src.step(net)]
                        else:
                            g_real = net_gradients(net, r_lq_p, r_hq_p, create_graph=False)
                        g_syn = net_gradients(net, s_lq_p, s_hq_p, create_graph=True)
                        loss = loss + gm_distance(g_real, g_syn)
                if use_tm:
                    s_lq = degrade(syn, derive(step_seed, "tm-lq"))
                    for name in m.nets:
                        experts = trajs[name]
                        traj = experts[int(torch.randint(len(experts), (1,), generator=gen_rng))]
                        begin = int(torch.randint(window[0], window[1] + 1, (1,),
                                                  generator=gen_rng))
                        loss = loss + trajectory_loss(
                            traj, begin, tm.span, syn, s_lq, log_lr.exp(), tm.syn_steps,
                            m.syn_patches, m.patch_size, gen_rng,
                        )
                if use_lfd:
                    loss = loss + m.lfd_weight * lfd_loss(bank, r_hq_p, syn, generator=gen_rng)
                loss = loss + spg.structure_weight * structure_loss(
                    syn, p_img, spg.structure, spg.lowpass_sigma
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if spg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(gen.parameters(), spg.grad_clip)
                opt.step()
                last = float(loss.detach())
                if step == 0:
                    first = last
                step += 1
                if ctx.progress is not None:
                    ctx.progress(step, total, last)
                if m.inner_steps and use_gm:
                    with torch.no_grad():
                        s_det = synth()
                        s_lq_det = degrade(s_det, derive(step_seed, "inner-lq"))
                    for _ in range(m.inner_steps):
                        hq_p, lq_p = random_patches(
                            [s_det, s_lq_det], m.syn_patches, m.patch_size, gen_rng
                        )
                        for net, net_opt in zip(nets, net_opts, strict=True):
                            net_opt.zero_grad(set_to_none=True)
                            pair_loss(net, lq_p, hq_p).backward()
                            net_opt.step()
        with torch.no_grad():
            hq = synth()
        info = {
            **fitted,
            "loss_first": first,
            "loss_last": last,
            "steps": float(step),
            "seconds": time.perf_counter() - t0,
        }
        if use_tm:
            info["tm_student_lr"] = float(log_lr.detach().exp())
        if dp_src is not None:
            info.update(
                dp_noise_multiplier=dp_src.noise_multiplier,
                dp_sample_rate=dp_src.sample_rate,
                dp_steps=float(dp_src.steps),
                dp_epsilon=dp_src.epsilon(self.cfg.dp.delta),
            )
        return finish(hq, ctx, info)
