"""Radon / FBP against scikit-image, gradients by gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, resize
from skimage.transform import radon as sk_radon

from medidd.degrade.radon import ParallelBeam, fbp, radon


def _phantom(size: int = 128) -> np.ndarray:
    img = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    yy, xx = np.mgrid[:size, :size] - size // 2
    return img * (xx**2 + yy**2 <= (size // 2) ** 2)


def _circle(size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size // 2
    return xx**2 + yy**2 <= (size // 2) ** 2


def _relerr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("circle", [True, False])
@pytest.mark.parametrize("n_angles", [180, 61])
def test_radon_matches_skimage(circle: bool, n_angles: int) -> None:
    img = _phantom()
    theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    ours = radon(torch.from_numpy(img)[None, None], n_angles, circle=circle)[0, 0].numpy().T
    ref = sk_radon(img, theta, circle=circle)
    assert ours.shape == ref.shape
    assert _relerr(ours, ref) < 1e-2
    assert _relerr(ours, ref) < 1e-10  # same sampling, so in fact equal to float precision


@pytest.mark.parametrize("circle", [True, False])
@pytest.mark.parametrize("filter_name", ["ramp", "shepp-logan", "hann"])
def test_fbp_matches_skimage(circle: bool, filter_name: str) -> None:
    img = _phantom()
    theta = np.linspace(0.0, 180.0, 180, endpoint=False)
    sino = sk_radon(img, theta, circle=circle)
    ours = fbp(torch.from_numpy(sino.T.copy())[None, None], 128, circle=circle,
               filter_name=filter_name)[0, 0].numpy()
    ref = iradon(sino, theta, circle=circle, filter_name=filter_name, output_size=128)
    assert _relerr(ours, ref, _circle(128)) < 1e-2
    assert _relerr(ours, ref, _circle(128)) < 1e-10


def test_fbp_of_radon_reconstructs_the_phantom() -> None:
    img = torch.from_numpy(_phantom())[None, None]
    rec = fbp(radon(img, 180), 128)
    err = _relerr(rec[0, 0].numpy(), img[0, 0].numpy(), _circle(128))
    # The discretisation error of a 128 px FBP (why ct_lowdose adds only the noise difference).
    assert 0.02 < err < 0.2


def test_batched_equals_one_by_one_float32() -> None:
    gen = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 1, 32, 32, generator=gen)
    batch = radon(imgs, 30, circle=False)
    single = torch.cat([radon(imgs[i : i + 1], 30, circle=False) for i in range(3)])
    torch.testing.assert_close(batch, single)
    assert batch.dtype == torch.float32
    rec = fbp(batch, 32, circle=False)
    torch.testing.assert_close(rec, torch.cat([fbp(single[i : i + 1], 32, circle=False)
                                               for i in range(3)]))


@pytest.mark.parametrize("circle", [True, False])
def test_gradcheck_radon_and_fbp(circle: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: radon(x, 7, circle=circle), (img,))
    geom = ParallelBeam(8, 7, circle)
    sino = torch.rand(2, 1, 7, geom.n_detectors, dtype=torch.float64, generator=gen,
                      requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: fbp(s, 8, circle=circle), (sino,))
    assert torch.autograd.gradgradcheck(lambda x: radon(x, 7, circle=circle) ** 2, (img,))


def test_adjoint_identity() -> None:
    """<R x, y> == <x, R^T y>: the backward pass is the true transpose."""
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    sino = radon(x, 12)
    y = torch.rand(sino.shape, dtype=torch.float64, generator=gen)
    (grad,) = torch.autograd.grad((sino * y).sum(), x)
    lhs, rhs = float((sino * y).sum().detach()), float((x * grad).sum().detach())
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_bad_shapes_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="square images"):
        radon(torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="detector bins"):
        fbp(torch.zeros(1, 1, 10, 12), size=16)
