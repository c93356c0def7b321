"""``idc``: Instance Data Condensation (seed 004) for one patient's HQ slices.

IDC condenses each image ("instance") into a few synthetic patches by distribution matching of
*local* features with the neural characteristic function discrepancy (NCFD). Here, per patient:

* **Feature extractor** ``f``: a fixed, seeded random 3x3 conv layer (``width`` channels,
  ReLU). IDC uses a teacher ISR model trained on the data; none is available at a node without
  training one, so a random extractor stands in (as in DM). Its maps are standardised per
  channel with the *real* statistics (the seed's batch norm before the local filter; using the
  real statistics for both sides keeps the normalisation a fixed map).
* **Random local Fourier features**: the identity filter ``E`` (``C' = width * k * k`` outputs,
  one per (channel, offset) of a ``k`` x ``k`` window) is Fourier-transformed along its output
  axis; real and negated imaginary parts form ``2C'`` filters, of which ``features`` non-zero
  ones are sampled (seeded) - eq. (4)-(5) of the seed. Maps are cut into ``p`` x ``p`` feature
  patches and unfolded so every pixel's feature vector is one sample.
* **Losses** (eq. 6-8): ``L_ins`` = NCFD between all real and synthetic samples;
  ``L_group`` = NCFD per group, after k-means of the real feature patches into ``groups``
  clusters and a quota-constrained assignment of synthetic patches (quotas proportional to the
  real group sizes, refreshed every ``reassign_every`` steps); ``L_pair`` = L1 between each
  synthetic feature patch and its nearest real patch of the same group. ``L_ins`` alone during
  ``warmup`` steps, then all three (Algorithm 1). NCFD per frequency ``t`` is
  ``sqrt(alpha (|Phi_r| - |Phi_s|)^2 + (1 - alpha) 2 |Phi_r| |Phi_s| (1 - cos(phase_r -
  phase_s)))`` averaged over ``frequencies`` Gaussian frequencies fixed per run (no sampling
  network, as the seed's IDC). Each step evaluates the losses on ``max_patches`` random
  synthetic feature patches, which bounds the cost for any ``ipc``.

Differences from the seed, on purpose: the synthetic images are the HQ slices themselves (their
LQ comes from the task degradation, not from a teacher up-sampler); initialisation is noise with
the patient's mean/std intensity (Algorithm 1 initialises randomly), so it works for any
``ipc``. The reference real features come from ``real_patches`` fixed random real patches.
The "multi-formation" factor of the *other* IDC (Kim et al. 2022, several down-sampled images
per stored image) is not used: the package ships full-resolution HQ slices that the aggregator
trains on directly, and up-sampled sub-images would be blurry training targets.
``L_pair`` pulls synthetic local features towards real ones; the memorisation audit measures
whether that produces near-copies.

Example:
    >>> fourier_filters(width=2, kernel=3, n=4, seed=0).shape
    torch.Size([4, 2, 3, 3])
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from medidd.distill.base import DistillContext, Distilled, finish, register_method
from medidd.distill.baselines._common import generator, noise_init, real_images, report
from medidd.distill.config import DistillConfig
from medidd.distill.matching import random_patches
from medidd.distill.options import IDCOptions
from medidd.preprocess.slices import SliceSet
from medidd.seeds import derive


def fourier_filters(width: int, kernel: int, n: int, seed: int) -> torch.Tensor:
    """``n`` random local Fourier filters (n, width, k, k): rows of ``[Re F(E), -Im F(E)]``
    with ``E`` the identity over (channel, offset); conjugate duplicates and zero rows are
    dropped, leaving the ``C' = width * k * k`` orthogonal real-DFT filters, scaled to unit
    norm, of which ``n`` are sampled."""
    c_prime = width * kernel * kernel
    eye = torch.eye(c_prime, dtype=torch.float64)
    # rows j and C' - j are conjugates: keep the non-redundant half (the real DFT basis)
    spec = torch.fft.fft(eye, dim=0)[: c_prime // 2 + 1]
    bank = torch.cat([spec.real, -spec.imag]).float()
    norms = bank.norm(dim=1)
    bank = bank[norms > 1e-6] / norms[norms > 1e-6].unsqueeze(1)
    if n > len(bank):
        raise ValueError(f"idc.features={n} exceeds the {len(bank)} local Fourier filters of "
                         f"width={width}, kernel={kernel}; lower features or raise kernel")
    pick = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:n]
    return bank[pick.sort().values].reshape(n, width, kernel, kernel)


def char_fn(samples: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical characteristic function (real, imaginary) of samples (M, D) at freqs (T, D)."""
    proj = samples @ freqs.t()
    return torch.cos(proj).mean(0), torch.sin(proj).mean(0)


def ncfd(real: tuple[torch.Tensor, torch.Tensor], syn: tuple[torch.Tensor, torch.Tensor],
         alpha: float) -> torch.Tensor:
    """Neural characteristic function discrepancy (amplitude + phase terms), mean over t.

    Example:
        >>> cf = (torch.ones(3), torch.zeros(3))
        >>> round(float(ncfd(cf, cf, 0.5)), 3)
        0.001
    """
    amp_r = torch.sqrt(real[0] ** 2 + real[1] ** 2 + 1e-12)
    amp_s = torch.sqrt(syn[0] ** 2 + syn[1] ** 2 + 1e-12)
    amplitude = (amp_r - amp_s) ** 2
    # 2 |a||b| (1 - cos(phase_a - phase_b)) = 2 (|a||b| - Re(a conj b)): no atan2 needed
    phase = 2.0 * (amp_r * amp_s - (real[0] * syn[0] + real[1] * syn[1]))
    return torch.sqrt(alpha * amplitude + (1 - alpha) * phase.clamp_min(0) + 1e-6).mean()


def kmeans(x: torch.Tensor, k: int, iters: int, g: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means of rows of ``x``; returns centroids (k, D) (seeded initialisation)."""
    k = min(k, len(x))
    cent = x[torch.randperm(len(x), generator=g)[:k].to(x.device)].clone()
    for _ in range(iters):
        lab = torch.cdist(x, cent).argmin(1)
        for j in range(k):
            members = x[lab == j]
            if len(members):
                cent[j] = members.mean(0)
    return cent


def assign_with_quotas(dist: torch.Tensor, quotas: torch.Tensor) -> torch.Tensor:
    """Assign each row (synthetic patch) to a column (group), nearest first, without exceeding
    ``quotas`` (which must sum to at least the number of rows)."""
    n, k = dist.shape
    left = [int(q) for q in quotas]
    out = [-1] * n
    todo = n
    for flat in dist.flatten().argsort().tolist():
        i, j = divmod(flat, k)
        if out[i] < 0 and left[j] > 0:
            out[i], left[j], todo = j, left[j] - 1, todo - 1
            if todo == 0:
                break
    return torch.tensor(out, dtype=torch.long)


class _Features(torch.nn.Module):
    """``f`` (random conv + ReLU, standardised by real statistics) then the Fourier filters."""

    conv: torch.Tensor
    fourier: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, o: IDCOptions, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("conv", torch.randn(o.width, 1, 3, 3, generator=g) * (2 / 9) ** 0.5)
        bank = fourier_filters(o.width, o.kernel, o.features, derive(seed, "fourier"))
        self.register_buffer("fourier", bank)
        self.register_buffer("mean", torch.zeros(1, o.width, 1, 1))
        self.register_buffer("std", torch.ones(1, o.width, 1, 1))
        self.p = o.local_patch

    def calibrate(self, real: torch.Tensor) -> None:
        h = F.relu(F.conv2d(real, self.conv, padding=1))
        self.mean = h.mean(dim=(0, 2, 3), keepdim=True)
        self.std = h.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature patches (num_patches, p * p, features) of images (N, 1, H, W)."""
        h = (F.relu(F.conv2d(x, self.conv, padding=1)) - self.mean) / self.std
        h = F.conv2d(h, self.fourier, padding=int(self.fourier.shape[-1]) // 2)
        cols = F.unfold(h, self.p, stride=self.p)  # (N, C * p * p, L)
        n, _, length = cols.shape
        cols = cols.reshape(n, -1, self.p * self.p, length).permute(0, 3, 2, 1)
        return cols.reshape(n * length, self.p * self.p, -1)


@register_method("idc")
class InstanceDataCondensation:
    """Multi-level NCFD matching of random local Fourier features (see module docstring)."""

    name = "idc"
    ships_real_slices = False
    needs_prior = False

    def __init__(self, cfg: DistillConfig, options: IDCOptions | None = None) -> None:
        self.cfg = cfg
        self.opt = options or cfg.idc

    def distill(self, real: SliceSet, ctx: DistillContext) -> Distilled:
        """Condense the patient's slices into ``ctx.ipc`` HQ images."""
        start, o = time.perf_counter(), self.opt
        images = real_images(real, ctx)
        g = generator(ctx.seed, "idc")
        feats = _Features(o, derive(ctx.seed, "idc-f")).to(ctx.device)
        (ref,) = random_patches([images], o.real_patches, self.cfg.matching.patch_size, g)
        feats.calibrate(ref)
        freqs = (torch.randn(o.frequencies, o.features, generator=g) * o.freq_scale
                 / o.features**0.5).to(ctx.device)
        with torch.no_grad():
            real_patches = feats(ref)  # (P, p*p, C)
            real_cf = char_fn(real_patches.flatten(0, 1), freqs)
            cent = kmeans(real_patches.mean(1), o.groups, o.kmeans_iters, g)
            real_lab = torch.cdist(real_patches.mean(1), cent).argmin(1)
            group_cf = [char_fn(real_patches[real_lab == j].flatten(0, 1), freqs)
                        if bool((real_lab == j).any()) else None for j in range(len(cent))]

        syn = noise_init(images, ctx.ipc, ctx.seed).requires_grad_(True)
        opt = torch.optim.Adam([syn], lr=o.lr)
        syn_lab = pair = torch.empty(0, dtype=torch.long)
        last = float("nan")

        def ins_probe() -> float:
            with torch.no_grad():
                return float(ncfd(real_cf, char_fn(feats(syn).flatten(0, 1), freqs), o.alpha))

        ins_start = ins_probe()
        for step in range(o.steps):
            sp = feats(syn)
            sel = torch.randperm(len(sp), generator=g)[: o.max_patches].to(sp.device)
            loss = o.w_ins * ncfd(real_cf, char_fn(sp[sel].flatten(0, 1), freqs), o.alpha)
            if step >= o.warmup:
                if (step - o.warmup) % o.reassign_every == 0:
                    syn_lab, pair = self._assign(sp.detach(), real_patches, real_lab, cent)
                loss = loss + self._group_losses(sp[sel], syn_lab[sel], pair[sel], real_patches,
                                                 group_cf, freqs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                syn.clamp_(0.0, 1.0)
            last = float(loss.detach())
            report(ctx, step + 1, o.steps, last)
        info = {"probe_start": ins_start, "probe_end": ins_probe(),
                "final_loss": last, "steps": float(o.steps),
                "seconds": time.perf_counter() - start}
        return finish(syn, ctx, info)

    def _assign(self, sp: torch.Tensor, real_patches: torch.Tensor, real_lab: torch.Tensor,
                cent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group of every synthetic patch (quotas ~ real group sizes) and its nearest real
        patch within that group (index into ``real_patches``)."""
        k = len(cent)
        frac = torch.bincount(real_lab, minlength=k).float() / len(real_lab)
        quotas = torch.ceil(frac * len(sp)).long()
        lab = assign_with_quotas(torch.cdist(sp.mean(1), cent).cpu(), quotas.cpu()).to(sp.device)
        pair = torch.zeros(len(sp), dtype=torch.long, device=sp.device)
        flat_real = real_patches.flatten(1)
        for j in range(k):
            rows, cands = (lab == j).nonzero().flatten(), (real_lab == j).nonzero().flatten()
            if len(rows) and len(cands):
                d = torch.cdist(sp[rows].flatten(1), flat_real[cands])
                pair[rows] = cands[d.argmin(1)]
        return lab, pair

    def _group_losses(self, sp: torch.Tensor, lab: torch.Tensor, pair: torch.Tensor,
                      real_patches: torch.Tensor,
                      group_cf: list[tuple[torch.Tensor, torch.Tensor] | None],
                      freqs: torch.Tensor) -> torch.Tensor:
        o = self.opt
        total = sp.new_zeros(())
        for j, cf in enumerate(group_cf):
            rows = (lab == j).nonzero().flatten()
            if cf is None or len(rows) == 0:
                continue
            mine = sp[rows]
            total = total + o.w_group * ncfd(cf, char_fn(mine.flatten(0, 1), freqs), o.alpha)
            total = total + o.w_pair * (mine - real_patches[pair[rows]]).abs().mean()
        return total
