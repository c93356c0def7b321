"""Matching objectives shared by the optimisation-based methods (pure torch, no state).

* :func:`gm_distance` - the layer-wise gradient distance of dataset condensation (Zhao et al.
  2021): for every weight tensor, the sum over output channels of ``1 - cos`` between the real
  and the synthetic gradient; biases and norm parameters are ignored.
* :class:`MatchingNet` - the small enhancement CNN ``f_theta`` whose gradients are matched
  (no BatchNorm, so the same net can run under Opacus per-sample hooks).
* :func:`random_patches` - seeded random crops, identical positions across paired stacks.
* :class:`LocalFeatureBank` - fixed random zero-mean local filters; :func:`lfd_loss` compares the
  distributions of their responses on real and synthetic images through the empirical
  characteristic function at random frequencies (the NCFD idea of seed 004, on local features).

Example:
    >>> import torch
    >>> g = [torch.ones(4, 1, 3, 3), torch.ones(4)]
    >>> round(float(gm_distance(g, g)), 4)
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gm_distance(real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
    """Dataset-condensation layer-wise distance between two gradient lists of equal shapes.

    For a weight of shape (out, ...) the distance is ``sum_o 1 - cos(real[o], syn[o])``; 1-D
    tensors (biases) contribute nothing, as in the reference implementation.
    """
    if len(real) != len(syn):
        raise ValueError(f"gradient lists differ in length: {len(real)} vs {len(syn)}")
    total = syn[0].new_zeros(())
    for gr, gs in zip(real, syn, strict=True):
        if gr.shape != gs.shape:
            raise ValueError(f"gradient shapes differ: {tuple(gr.shape)} vs {tuple(gs.shape)}")
        if gr.ndim == 1:
            continue
        r = gr.reshape(gr.shape[0], -1)
        s = gs.reshape(gs.shape[0], -1)
        cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + 1e-6)
        total = total + (1.0 - cos).sum()
    return total


class MatchingNet(nn.Module):
    """``f_theta``: a plain residual CNN (conv-ReLU x depth) predicting HQ from LQ.

    Example:
        >>> net = MatchingNet(width=8, depth=3)
        >>> net(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


#: the architectures matching can use (``matching.nets``), each sized from ``net_width`` and
#: ``net_depth`` so a CPU-sized config stays CPU-sized: ``plain`` is :class:`MatchingNet`;
#: ``dncnn``, ``redcnn`` and ``unet`` are small members of the families the aggregator trains
#: (:mod:`medidd.nets`), none with BatchNorm, so each also runs under Opacus' per-sample hooks.
MATCHING_NETS = ("plain", "dncnn", "redcnn", "unet")


def build_matching_net(name: str, width: int, depth: int) -> nn.Module:
    """An untrained matching net of architecture ``name`` (global RNG: seed it around the call).

    Example:
        >>> [type(build_matching_net(n, 8, 3)).__name__ for n in MATCHING_NETS]
        ['MatchingNet', 'DnCNN', 'RedCNN', 'UNet']
    """
    from medidd.lookup import look_up_option
    from medidd.nets import build_net

    name = look_up_option(name, MATCHING_NETS, what="matching net (matching.nets)")
    if name == "plain":
        return MatchingNet(width, depth)
    if name == "dncnn":
        return build_net("dncnn", width=width, depth=depth + 2)
    if name == "redcnn":
        return build_net("redcnn", width=width, depth=depth, kernel_size=3)
    return build_net("unet", width=max(4, width // 2), depth=2, num_res_units=0, norm="none")


def fresh_matching_net(
    width: int, depth: int, seed: int, device: torch.device, name: str = "plain"
) -> nn.Module:
    """A freshly initialised matching net (:func:`build_matching_net`), deterministic in
    ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_matching_net(name, width, depth)
    return net.to(device)


def check_matching_nets(names: list[str], width: int, depth: int, patch: int) -> None:
    """Refuse, before any work, a ``matching.nets`` entry that cannot map a ``patch`` x
    ``patch`` LQ patch to an image of the same size.

    Example:
        >>> check_matching_nets(["plain", "unet"], 8, 3, 16)
        >>> check_matching_nets(["redcnn"], 8, 20, 16)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: matching.nets: 'redcnn' cannot run on 16 px patches (...); ...
    """
    x = torch.zeros(1, 1, patch, patch)
    for name in names:
        try:
            with torch.no_grad():
                out = build_matching_net(name, width, depth)(x)
            problem = None if out.shape == x.shape else f"returns shape {tuple(out.shape)}"
        except (RuntimeError, ValueError) as exc:
            problem = str(exc).split("\n")[0]
        if problem:
            raise ValueError(
                f"matching.nets: '{name}' cannot run on {patch} px patches ({problem}); "
                f"raise matching.patch_size, lower matching.net_depth, or drop '{name}'"
            )


def random_patches(
    stacks: list[torch.Tensor], n: int, size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Crop ``n`` random ``size`` x ``size`` patches at the same positions from every stack.

    All stacks are (N, C, H, W) with equal N, H, W; a patch larger than the image is the whole
    image. Indices and offsets come from ``generator`` (CPU), so the crop is reproducible.
    """
    ref = stacks[0]
    num, _, h, w = ref.shape
    size_h, size_w = min(size, h), min(size, w)
    idx = torch.randint(0, num, (n,), generator=generator)
    ys = torch.randint(0, h - size_h + 1, (n,), generator=generator)
    xs = torch.randint(0, w - size_w + 1, (n,), generator=generator)
    out = []
    for s in stacks:
        crops = [
            s[i, :, y : y + size_h, x : x + size_w] for i, y, x in zip(idx, ys, xs, strict=True)
        ]
        out.append(torch.stack(crops))
    return out


def pair_loss(net: nn.Module, lq: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
    """The enhancement loss whose gradients are matched: mean squared error."""
    return F.mse_loss(net(lq), hq)


def net_gradients(
    net: nn.Module, lq: torch.Tensor, hq: torch.Tensor, *, create_graph: bool
) -> list[torch.Tensor]:
    """Gradients of :func:`pair_loss` w.r.t. every parameter of ``net`` (graph kept if asked)."""
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(pair_loss(net, lq, hq), params, create_graph=create_graph)
    return list(grads) if create_graph else [g.detach() for g in grads]


class LocalFeatureBank(nn.Module):
    """Fixed random local filters with zero mean (they see texture and edges, not brightness),
    plus random frequencies at which characteristic functions of their responses are compared.

    Example:
        >>> bank = LocalFeatureBank(n_features=8, kernel=5, n_frequencies=16, seed=0)
        >>> bank(torch.rand(2, 1, 20, 20)).shape
        torch.Size([2, 8, 16, 16])
    """

    weight: torch.Tensor
    freqs: torch.Tensor

    def __init__(self, n_features: int, kernel: int, n_frequencies: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n_features, 1, kernel, kernel, generator=g)
        w = w - w.mean(dim=(2, 3), keepdim=True)
        w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        self.register_buffer("weight", w)
        # frequencies for the joint characteristic function over feature vectors
        self.register_buffer("freqs", torch.randn(n_frequencies, n_features, generator=g) * 4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight)


def lfd_loss(
    bank: LocalFeatureBank,
    real: torch.Tensor,
    syn: torch.Tensor,
    max_points: int = 4096,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Squared distance between the empirical characteristic functions of local feature
    vectors of ``real`` and ``syn`` images (N, 1, H, W), at the bank's random frequencies.

    Each pixel's vector of filter responses is one sample; up to ``max_points`` pixels per side
    are sub-sampled (seeded) to bound the cost. The value is 0 for equal distributions.
    """

    def phi(x: torch.Tensor) -> torch.Tensor:
        feats = bank(x).permute(0, 2, 3, 1).reshape(-1, bank.weight.shape[0])
        if feats.shape[0] > max_points:
            sel = torch.randperm(feats.shape[0], generator=generator)[:max_points].to(feats.device)
            feats = feats[sel]
        proj = feats @ bank.freqs.t()
        return torch.stack([torch.cos(proj).mean(0), torch.sin(proj).mean(0)], dim=-1)

    with torch.no_grad():
        target = phi(real)
    return ((phi(syn) - target) ** 2).sum()
