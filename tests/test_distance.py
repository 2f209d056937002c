"""Image-set distances: patch SWD, KID, segmenter features and the image loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffdass.data.folder import DataError
from diffdass.data.images import iter_image_batches, load_images
from diffdass.evaluation.distance import (
    extract_patches,
    image_set_distance,
    kid,
    laplacian_pyramid,
    mmd2_unbiased,
    normalize_descriptors,
    polynomial_kernel,
    segmenter_features,
    sliced_wasserstein,
    wasserstein_1d,
)
from diffdass.utils.io import save_image

# small settings: every test stays well under a second of CPU
FAST = dict(n_directions=128, patches_per_image=32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These ops are tiny: one thread avoids the oversubscription cost on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def noise_images(n: int, std: float, offset: float = 0.0, seed: int = 0, size=(24, 24)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n, 3, *size), generator=g) * std + offset).clamp(-1, 1)


def smooth_images(n: int, seed: int = 0, size=(24, 24)):
    """Low-frequency images: noise upsampled from 3x3 (same value range as the noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, 3, 3), generator=g) * 0.3
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(-1, 1)


# --------------------------------------------------------------------------- sliced W1
def test_wasserstein_1d_matches_hand_computed_value():
    x = torch.tensor([0.0, 3.0, 1.0])
    y = torch.tensor([2.0, 0.5, 5.0])
    # sorted: [0, 1, 3] vs [0.5, 2, 5] -> |diffs| = 0.5, 1, 2 -> mean 7/6
    assert wasserstein_1d(x, y).item() == pytest.approx(7 / 6, abs=1e-7)


def test_sliced_wasserstein_in_1d_is_w1_and_recovers_the_mean_shift():
    g = torch.Generator().manual_seed(0)
    m = 0.7
    x = torch.randn(4000, generator=g)
    y = torch.randn(4000, generator=g) + m
    # in 1-D every unit direction is +-1 and W1 is invariant to a common sign flip
    sw = sliced_wasserstein(x[:, None], y[:, None], n_directions=8, generator=g)
    hand = (np.sort(x.numpy()) - np.sort(y.numpy())).__abs__().mean()
    assert torch.allclose(sw, torch.full_like(sw, float(hand)), atol=1e-6)
    assert float(sw.mean()) == pytest.approx(m, abs=0.08)  # W1(N(0,1), N(m,1)) = |m|


def test_sliced_wasserstein_uses_given_directions_and_checks_shapes():
    x, y = torch.zeros(5, 2), torch.zeros(5, 2)
    y[:, 0] = 1.0  # a shift of 1 along the first axis
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert sliced_wasserstein(x, y, directions=d).tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="point clouds"):
        sliced_wasserstein(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="equal-size"):
        wasserstein_1d(torch.zeros(4), torch.zeros(5))


# --------------------------------------------------------------------------- pyramid / patches
def test_laplacian_pyramid_constant_image_has_zero_detail_and_is_invertible():
    x = torch.full((1, 3, 20, 30), 0.3)
    lap = laplacian_pyramid(x, 3)
    assert [tuple(t.shape[-2:]) for t in lap] == [(20, 30), (10, 15), (5, 8)]
    assert lap[0].abs().max() < 1e-6 and lap[1].abs().max() < 1e-6
    assert torch.allclose(lap[2], torch.full_like(lap[2], 0.3), atol=1e-6)


def test_extract_patches_returns_real_patches():
    x = torch.arange(2 * 3 * 9 * 11, dtype=torch.float32).reshape(2, 3, 9, 11)
    p = extract_patches(x, 5, 4, torch.Generator().manual_seed(0))
    assert p.shape == (10, 3, 4, 4)
    for i in range(10):
        img = x[i // 5]
        # locate the patch by its top-left value of channel 0
        y0, x0 = divmod(int(p[i, 0, 0, 0] - img[0, 0, 0]), 11)
        assert torch.equal(p[i], img[:, y0 : y0 + 4, x0 : x0 + 4])
    with pytest.raises(ValueError, match="smaller than"):
        extract_patches(x, 1, 10)


def test_reference_normalisation_keeps_a_mean_shift_per_set_removes_it():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(500, 3, 2, 2, generator=g)
    a = b + 1.0
    ra, rb = normalize_descriptors(a, b, "reference")
    assert float((ra - rb).mean()) == pytest.approx(1.0 / float(b.std()), rel=0.05)
    pa, pb = normalize_descriptors(a, b, "per_set")
    assert torch.allclose(pa, pb, atol=1e-5)


# --------------------------------------------------------------------------- patch SWD
def test_swd_same_distribution_is_much_smaller_than_different_distributions():
    pool = noise_images(64, 0.3, seed=1)  # one i.i.d. set, split in two disjoint halves
    same = image_set_distance(pool[:32], pool[32:], **FAST)
    std = image_set_distance(noise_images(32, 0.1, seed=2), noise_images(32, 0.5, seed=3), **FAST)
    texture = image_set_distance(smooth_images(32, seed=4), noise_images(32, 0.3, seed=5), **FAST)
    assert len(same["swd_per_level"]) == 2 and same["n_images"] == [32, 32]
    assert same["patches_per_level"] == 32 * 32
    assert same["swd"] > 0
    assert std["swd"] > 5 * same["swd"]  # measured: 630 vs 73
    assert texture["swd"] > 5 * same["swd"]  # measured: 914 vs 73


def test_swd_is_monotone_in_a_mean_shift():
    base = noise_images(32, 0.25, seed=1)
    d = [
        image_set_distance(noise_images(32, 0.25, offset=o, seed=2), base, **FAST)["swd"]
        for o in (0.0, 0.1, 0.2, 0.4)
    ]
    assert d[0] < d[1] < d[2] < d[3], d
    assert d[1] > 3 * d[0]


def test_swd_is_deterministic_and_independent_of_batching():
    a, b = noise_images(16, 0.3, seed=1), smooth_images(16, seed=2)
    r1 = image_set_distance(a, b, seed=3, **FAST)
    r2 = image_set_distance(list(a.split(5)), iter(b.split(7)), seed=3, **FAST)
    r3 = image_set_distance(a, b, seed=4, **FAST)
    assert r1["swd_per_level"] == r2["swd_per_level"]
    assert r1["swd"] != r3["swd"]
    assert r3["swd"] == pytest.approx(r1["swd"], rel=0.2)  # a different draw, same scale


def test_swd_works_at_256x512_with_more_levels():
    a = noise_images(2, 0.3, seed=1, size=(256, 512))
    b = noise_images(2, 0.3, seed=2, size=(256, 512))
    r = image_set_distance(a, b, levels=4, n_directions=64, patches_per_image=64)
    assert len(r["swd_per_level"]) == 4 and all(v > 0 for v in r["swd_per_level"])


def test_swd_errors_name_the_cause():
    a = noise_images(4, 0.3)
    with pytest.raises(ValueError, match="set b: the image set is empty"):
        image_set_distance(a, [], **FAST)
    with pytest.raises(ValueError, match="channel counts differ"):
        image_set_distance(a, a[:, :1], **FAST)
    with pytest.raises(ValueError, match="channels, but earlier images have"):
        image_set_distance([a, a[:, :2]], a, **FAST)
    with pytest.raises(ValueError, match="level 1.*smaller than"):
        image_set_distance(noise_images(2, 0.3, size=(10, 10)), a, **FAST)
    with pytest.raises(TypeError, match="uint8"):
        image_set_distance(a, torch.zeros(2, 3, 24, 24, dtype=torch.uint8), **FAST)
    with pytest.raises(ValueError, match=r"expected images in \[-1, 1\]"):
        image_set_distance(a, a * 255, **FAST)


# --------------------------------------------------------------------------- KID
def _mmd2_numpy(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u, v):
        return (u @ v / d + 1.0) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_polynomial_mmd_matches_direct_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(0.5, 1.0, size=(5, 4))
    ours = mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y), polynomial_kernel)
    assert float(ours) == pytest.approx(_mmd2_numpy(x, y), abs=1e-6)
    # with subsets covering the whole (equal-size) sets, kid is that value with zero spread
    r = kid(x[:5], y, subsets=3)
    assert r["kid_mean"] == pytest.approx(_mmd2_numpy(x[:5], y), abs=1e-6)
    assert r["kid_std"] == pytest.approx(0.0, abs=1e-9) and r["subset_size"] == 5


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    same = kid(a, b, subsets=10, subset_size=200)
    shifted = kid(a, b + 0.5, subsets=10, subset_size=200)
    assert abs(same["kid_mean"]) < 0.03
    assert shifted["kid_mean"] > 0.3 and shifted["kid_mean"] > 10 * abs(same["kid_mean"])
    assert same["kid_std"] > 0  # proper subsets differ
    assert kid(a, b, subsets=10, subset_size=200) == same  # deterministic


def test_kid_errors():
    with pytest.raises(ValueError, match="dimensions differ"):
        kid(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2"):
        kid(torch.zeros(1, 3), torch.zeros(5, 3))


# --------------------------------------------------------------------------- segmenter features
class TinySeg(nn.Module):
    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Conv2d(6, k, 1)

    def forward(self, x):
        return {"out": self.head(self.drop(self.body(x)))}


def test_segmenter_features_default_and_layer():
    torch.manual_seed(0)
    model = TinySeg().train()
    x = noise_images(5, 0.3)
    f = segmenter_features(model, x, batch_size=2)
    assert f.shape == (5, 8)
    assert torch.allclose(f[:, 4:].sum(1), torch.ones(5), atol=1e-5)  # class histogram
    assert torch.allclose(f, segmenter_features(model, list(x.split(3))))  # eval: no dropout
    assert model.training and model.drop.training  # flags restored
    h = segmenter_features(model, x, layer="body")
    assert h.shape == (5, 6)
    with pytest.raises(KeyError, match="nope"):
        segmenter_features(model, x, layer="nope")
    # as the feature network of image_set_distance
    r = image_set_distance(
        x, noise_images(5, 0.3, seed=1), features=lambda b: segmenter_features(model, b), **FAST
    )
    assert set(r) >= {"swd", "kid_mean", "kid_std"}


# --------------------------------------------------------------------------- loading
def test_load_images(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        save_image(tmp_path / f"img{i}.png", a)
    (tmp_path / "notes.txt").write_text("not an image")
    x = load_images(tmp_path)
    assert x.shape == (3, 3, 8, 12) and x.min() >= -1 and x.max() <= 1
    back = ((x[1].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(back, arrays[1])
    assert load_images(tmp_path, size=(4, 6), limit=2).shape == (2, 3, 4, 6)
    assert [b.shape[0] for b in iter_image_batches(tmp_path, batch_size=2)] == [2, 1]
    save_image(tmp_path / "img9.png", arrays[0][:4])
    with pytest.raises(DataError, match="img9.png: size 12x4 differs"):
        load_images(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .png/.jpg images"):
        load_images(tmp_path / "empty")
