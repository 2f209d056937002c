"""Distances between two *sets of images* that need no downloaded weights.

Used to measure each stage of the pipeline against the target domain: target train vs target
val (the floor: two samples of the same distribution), source vs target val (the ceiling),
DDPM samples vs target val, and translated source images ``phi^n(x_s)`` vs target val.

Primary metric: sliced Wasserstein distance on patches (SWD)
    The multi-scale statistical similarity of Karras et al. 2018 (progressive GANs, Sec. 5 and
    their ``sliced_wasserstein.py``), simplified. For each image set and each pyramid level
    ``l`` (Laplacian by default: level 0 is the full-resolution band-pass detail
    ``G_0 - up(G_1)``, the last level the low-pass Gaussian ``G_L`` that carries colour):

    1. draw ``patches_per_image`` random ``k x k`` patches per image (default 7x7 RGB), giving
       descriptors ``d in R^D``, ``D = C k^2``; the two sets are cut to the same count ``M``
       (a random subset of the larger one, at most ``max_patches``);
    2. normalise (see *Normalisation* below) with an affine map per channel,
       ``d <- (d - mu_c) / sigma_c``;
    3. draw ``n_directions`` random unit directions ``theta_j`` (``N(0, I)`` normalised), project
       both sets ``p = <d, theta_j>``, sort each projected set and take the 1-D Wasserstein-1
       distance between the two equal-size empirical distributions::

           W1_j = 1/M sum_i | sort(p^a)_i - sort(p^b)_i |

    4. ``SWD_l = scale * mean_j W1_j`` and ``SWD = mean_l SWD_l``. ``scale = 1e3`` as in the
       PGGAN code (its printed values are ``x 1e3``); values are then ~1-100 for image sets.

    Why SWD here: it needs no pretrained network (no Inception / FID weights can be
    downloaded), it is sensitive to exactly what an image-to-image translation changes (the
    colour and texture statistics of local patches, per scale), it is a proper metric between
    the patch distributions (up to the random directions), it is cheap on CPU (sorting
    ``M x n_directions`` numbers) and it is deterministic given a seed.

    Limitations: it has no notion of semantics (a translation that turns cars into road
    texture can score well), it compares *marginal* patch statistics only (not the layout of a
    whole image), and like every sample-based distance it is biased upwards for finite samples:
    two sets from the same distribution give a small positive value that shrinks with the
    number of patches. Only compare numbers computed with the same settings (patch size,
    levels, patch counts, directions, seed, normalisation, reference set); the floor row
    (target train vs target val) gives the noise level.

Normalisation (``normalize``)
    PGGAN standardises each set *separately*: per channel, the mean and std over all patches
    and pixels of that set (``"per_set"``). This makes SWD blind to a global colour or
    brightness shift (each set's mean is removed), which is precisely a typical domain gap,
    so the default here is ``"reference"``: the per-channel mean/std of the *second* set (the
    reference, e.g. target val) is applied to both sets. The same affine map is then used on
    both sides, so a shift of the mean is measured, and every row of a table that shares the
    same reference set (and seed) is computed in the same descriptor space, hence comparable.
    ``"joint"`` uses the statistics of the union (symmetric in ``a``/``b``), ``"none"`` the raw
    values. ``patch_mean=True`` additionally removes each patch's own per-channel mean before
    the global normalisation (a texture-only comparison; also blind to colour shifts).

Secondary metric: KID on the features of a given network
    :func:`kid` is the unbiased MMD^2 of Binkowski et al. 2018 with the cubic polynomial kernel
    ``k(x, y) = (x.y / d + 1)^3`` over random subsets (as torch-fidelity / clean-fid);
    :func:`segmenter_features` turns any segmenter (e.g. the target-trained oracle) into a
    feature network, so a semantic-aware distance is available without downloaded weights.

Inputs are float images in ``[-1, 1]`` of shape ``(N, C, H, W)`` (the toolkit's range, see
:mod:`diffdass.data.folder`) or any iterable of such batches (consumed once, so a generator
works and large sets need not fit in memory; :func:`diffdass.data.images.iter_image_batches`
reads a folder lazily). Randomness comes only from ``torch.Generator``
objects seeded from ``seed``; per level and per set streams are independent, so the patches of
the reference set are the same whatever the other set is and however the sets are batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffdass.utils.modules import eval_mode, output_logits
from diffdass.utils.rng import derive_seed

__all__ = [
    "ImageSet",
    "Normalize",
    "extract_patches",
    "gaussian_pyramid",
    "image_set_distance",
    "kid",
    "laplacian_pyramid",
    "mmd2_unbiased",
    "normalize_descriptors",
    "polynomial_kernel",
    "random_directions",
    "segmenter_features",
    "sliced_wasserstein",
    "wasserstein_1d",
]

ImageSet = Tensor | Iterable[Tensor]
Normalize = Literal["reference", "joint", "per_set", "none"]
Pyramid = Literal["laplacian", "gaussian"]

# independent random streams, keyed by derive_seed(seed, stream, ...)
_STREAM_PATCHES_A, _STREAM_PATCHES_B, _STREAM_DIRECTIONS, _STREAM_SUBSET, _STREAM_KID = range(5)
_BINOMIAL5 = (1.0, 4.0, 6.0, 4.0, 1.0)  # /16: the 5-tap filter of Burt & Adelson (and PGGAN)
_RANGE_TOL = 1e-2  # images may exceed [-1, 1] by this much (rounding) before it is an error
_STD_EPS = 1e-4  # below ~1/100 of an 8-bit grey level: a constant channel


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


# --------------------------------------------------------------------------- image sets
def _check_batch(x: Any, where: str, channels: int | None, check_range: bool) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: expected a tensor (N, C, H, W), got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"{where}: expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{where}: expected float images in [-1, 1], got dtype {x.dtype} "
            "(convert uint8 images with x.float() / 127.5 - 1)"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{where}: {x.shape[1]} channels, but earlier images have {channels}")
    if check_range and x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 - _RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise ValueError(
                f"{where}: values span [{lo:.3g}, {hi:.3g}], expected images in [-1, 1] "
                "(a [0, 1] or [0, 255] tensor? pass check_range=False to allow any range)"
            )
    return x.detach().float()


def _batches(images: ImageSet, name: str, check_range: bool = True) -> Iterator[Tensor]:
    """Validated float batches of an image set (a 4-D tensor or an iterable of them)."""
    if isinstance(images, Tensor):
        images = [images]
    channels = None
    count = 0
    for i, x in enumerate(images):
        x = _check_batch(x, f"{name} (batch {i})", channels, check_range)
        if x.shape[0] == 0:
            continue
        channels = x.shape[1]
        count += x.shape[0]
        yield x
    if count == 0:
        raise ValueError(f"{name}: the image set is empty")


# --------------------------------------------------------------------------- pyramids
def _blur(x: Tensor) -> Tensor:
    """Separable 5x5 binomial blur ``[1 4 6 4 1]/16`` (same size, mirrored borders)."""
    h, w = x.shape[-2:]
    mode = "reflect" if min(h, w) > 2 else "replicate"
    x = F.pad(x, (2, 2, 2, 2), mode=mode)
    # five shifted slices per axis: cheaper on CPU than a depthwise conv for small images
    x = sum(c / 16 * x[..., :, i : i + w] for i, c in enumerate(_BINOMIAL5))
    return sum(c / 16 * x[..., i : i + h, :] for i, c in enumerate(_BINOMIAL5))


def _down(x: Tensor) -> Tensor:
    return _blur(x)[..., ::2, ::2]


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-insertion upsampling to ``size`` followed by the blur (x4 to keep the mean)."""
    b, c, h, w = x.shape
    y = x.new_zeros(b, c, 2 * h, 2 * w)
    y[..., ::2, ::2] = 4 * x
    return _blur(y[..., : size[0], : size[1]])


def gaussian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """``[G_0, ..., G_{levels-1}]``: ``G_0 = x``, ``G_{l+1} = blur(G_l)[::2, ::2]``."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    out = [x]
    for _ in range(levels - 1):
        out.append(_down(out[-1]))
    return out


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """``[L_0, ..., L_{levels-1}]``: ``L_l = G_l - up(G_{l+1})`` and ``L_last = G_last``.

    Exactly invertible (``G_l = L_l + up(G_{l+1})``); a constant image has zero band-pass
    levels, so only the last (low-pass) level carries the colour.
    """
    g = gaussian_pyramid(x, levels)
    return [g[i] - _up(g[i + 1], g[i].shape[-2:]) for i in range(levels - 1)] + [g[-1]]


# --------------------------------------------------------------------------- patches
def extract_patches(
    x: Tensor, n: int, patch_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` random ``patch_size`` square patches per image of ``x`` (B, C, H, W).

    Returns ``(B * n, C, patch_size, patch_size)`` on the CPU, image-major. Top-left corners
    are uniform over the valid positions; positions are drawn image by image from
    ``generator`` (CPU), so the draw does not depend on how the images are batched.
    """
    b, c, h, w = x.shape
    if h < patch_size or w < patch_size:
        raise ValueError(
            f"image (or pyramid level) of size {h}x{w} is smaller than the {patch_size}x"
            f"{patch_size} patches; use fewer levels or a smaller patch_size"
        )
    if n < 1:
        raise ValueError(f"need at least one patch per image, got {n}")
    corners = [
        (
            torch.randint(0, h - patch_size + 1, (n,), generator=generator),
            torch.randint(0, w - patch_size + 1, (n,), generator=generator),
        )
        for _ in range(b)
    ]
    ys = torch.stack([cy for cy, _ in corners]).to(x.device)
    xs = torch.stack([cx for _, cx in corners]).to(x.device)
    r = torch.arange(patch_size, device=x.device)
    yy = (ys[..., None] + r)[..., :, None]  # (B, n, k, 1)
    xx = (xs[..., None] + r)[..., None, :]  # (B, n, 1, k)
    bb = torch.arange(b, device=x.device)[:, None, None, None]
    p = x.permute(0, 2, 3, 1)[bb, yy, xx]  # (B, n, k, k, C)
    return p.permute(0, 1, 4, 2, 3).reshape(b * n, c, patch_size, patch_size).cpu()


def _collect(
    images: ImageSet,
    name: str,
    stream: int,
    seed: int,
    patch_size: int,
    levels: int,
    patches_per_image: int,
    pyramid: Pyramid,
    check_range: bool,
    features: Callable[[Tensor], Tensor] | None,
) -> tuple[list[Tensor], int, Tensor | None]:
    """One pass over a set: per-level patch descriptors, image count, optional features."""
    if pyramid not in ("laplacian", "gaussian"):
        raise ValueError(f"pyramid must be 'laplacian' or 'gaussian', got {pyramid!r}")
    build = laplacian_pyramid if pyramid == "laplacian" else gaussian_pyramid
    gens = [_generator(seed, stream, lvl) for lvl in range(levels)]
    desc: list[list[Tensor]] = [[] for _ in range(levels)]
    feats: list[Tensor] = []
    n = 0
    for x in _batches(images, name, check_range):
        n += x.shape[0]
        for lvl, (g, level) in enumerate(zip(gens, build(x, levels), strict=True)):
            try:
                desc[lvl].append(extract_patches(level, patches_per_image, patch_size, g))
            except ValueError as exc:
                raise ValueError(f"{name}, pyramid level {lvl}: {exc}") from exc
        if features is not None:
            feats.append(features(x).detach().float().cpu().reshape(x.shape[0], -1))
    return [torch.cat(d) for d in desc], n, (torch.cat(feats) if feats else None)


def normalize_descriptors(
    a: Tensor, b: Tensor, mode: Normalize = "reference", patch_mean: bool = False
) -> tuple[Tensor, Tensor]:
    """Normalise two descriptor sets ``(M, C, k, k)``; returns them flattened to ``(M, C k^2)``.

    ``patch_mean`` first subtracts each patch's per-channel mean over its ``k x k`` pixels.
    Then ``d_c <- (d_c - mu_c) / sigma_c`` with the per-channel mean/std over patches and
    pixels of: ``b`` (``"reference"``), ``a`` and ``b`` together (``"joint"``), each set
    itself (``"per_set"``, as PGGAN) or nothing (``"none"``). See the module docstring.
    """
    if a.ndim != 4 or b.ndim != 4 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"descriptor shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    if patch_mean:
        a = a - a.mean(dim=(2, 3), keepdim=True)
        b = b - b.mean(dim=(2, 3), keepdim=True)

    def stats(d: Tensor) -> tuple[Tensor, Tensor]:
        mu = d.mean(dim=(0, 2, 3), keepdim=True)
        sd = d.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(_STD_EPS)
        return mu, sd

    if mode == "reference":
        mu, sd = stats(b)
        a, b = (a - mu) / sd, (b - mu) / sd
    elif mode == "joint":
        mu, sd = stats(torch.cat([a, b]))
        a, b = (a - mu) / sd, (b - mu) / sd
    elif mode == "per_set":
        (mu_a, sd_a), (mu_b, sd_b) = stats(a), stats(b)
        a, b = (a - mu_a) / sd_a, (b - mu_b) / sd_b
    elif mode != "none":
        raise ValueError(f"normalize must be reference/joint/per_set/none, got {mode!r}")
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


# --------------------------------------------------------------------------- sliced W1
def random_directions(
    dim: int, n: int, generator: torch.Generator | None = None, dtype=torch.float32
) -> Tensor:
    """``(n, dim)`` directions uniform on the unit sphere (normalised Gaussian vectors)."""
    if dim < 1 or n < 1:
        raise ValueError(f"need dim >= 1 and n >= 1, got dim={dim}, n={n}")
    v = torch.randn((n, dim), generator=generator, dtype=dtype)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def wasserstein_1d(x: Tensor, y: Tensor) -> Tensor:
    """Column-wise W1 between two equal-size empirical distributions: ``(M, J) -> (J,)``.

    ``W1 = 1/M sum_i |sort(x)_i - sort(y)_i|`` (the optimal coupling of two equal-size 1-D
    samples matches them in sorted order). 1-D inputs are treated as one column.
    """
    if x.ndim == 1:
        x, y = x[:, None], y[:, None]
    if x.shape != y.shape:
        raise ValueError(f"need equal-size samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("cannot compare empty samples")
    # sort along contiguous rows (J, M): faster than along dim 0 on CPU
    xs = x.T.contiguous().sort(dim=1).values
    ys = y.T.contiguous().sort(dim=1).values
    return (xs - ys).abs().mean(dim=1)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_directions: int = 512,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
    chunk: int = 128,
) -> Tensor:
    """Sliced W1 between point clouds ``x``, ``y`` of shape ``(M, D)`` (equal ``M``).

    ``SW = 1/J sum_j W1(<x, theta_j>, <y, theta_j>)`` over ``J`` random unit directions
    (or the given ``directions`` ``(J, D)``), projected ``chunk`` directions at a time.
    Returns the per-direction distances ``(J,)``; take ``.mean()`` for SW. In 1-D the only
    directions are +-1, so this is exactly W1 of the two samples.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (M, D) point clouds, got {tuple(x.shape)} and {tuple(y.shape)}")
    if directions is None:
        directions = random_directions(x.shape[1], n_directions, generator, x.dtype)
    if directions.ndim != 2 or directions.shape[1] != x.shape[1]:
        raise ValueError(f"directions {tuple(directions.shape)} do not match D={x.shape[1]}")
    directions = directions.to(x)
    out = [wasserstein_1d(x @ d.T, y.to(x) @ d.T) for d in directions.split(max(1, int(chunk)))]
    return torch.cat(out)


def _equal_counts(a: Tensor, b: Tensor, max_patches: int | None, g: torch.Generator):
    """Random subsets of ``a`` and ``b`` of the same size ``min(|a|, |b|, max_patches)``."""
    m = min(a.shape[0], b.shape[0], max_patches or math.inf)
    if a.shape[0] > m:
        a = a[torch.randperm(a.shape[0], generator=g)[:m]]
    if b.shape[0] > m:
        b = b[torch.randperm(b.shape[0], generator=g)[:m]]
    return a, b


# --------------------------------------------------------------------------- KID
def polynomial_kernel(
    x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> Tensor:
    """``k(x, y) = (gamma x.y + coef0)^degree``, ``gamma = 1/d`` by default: ``(n, m)``."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (n, d) features, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(
    x: Tensor, y: Tensor, kernel: Callable[[Tensor, Tensor], Tensor] = polynomial_kernel
) -> Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012, Lemma 6) between samples ``x`` (m, d), ``y`` (n, d)::

        1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
            - 2/(mn) sum_{i,j} k(x_i, y_j)

    Can be (slightly) negative when the two distributions are equal.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return sxx + syy - 2 * kxy.mean()


def kid(
    feats_a: Tensor | np.ndarray,
    feats_b: Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
) -> dict[str, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) on arbitrary features ``(n, d)``.

    The mean and std over ``subsets`` random subsets (without replacement, size
    ``min(subset_size, n_a, n_b)``, as torch-fidelity / clean-fid) of :func:`mmd2_unbiased`
    with ``k(x, y) = (x.y / d + 1)^3``, in float64. Unbiased: ~0 (and possibly negative) for
    two samples of one distribution. Returns ``{"kid_mean", "kid_std", "subset_size",
    "subsets"}``; unlike torch-fidelity, no x1e3 scaling is applied.
    """
    a = torch.as_tensor(np.asarray(feats_a) if not isinstance(feats_a, Tensor) else feats_a)
    b = torch.as_tensor(np.asarray(feats_b) if not isinstance(feats_b, Tensor) else feats_b)
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"features must be (n, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {len(a)}, {len(b)}")
    g = _generator(seed, _STREAM_KID)

    def kern(x: Tensor, y: Tensor) -> Tensor:
        return polynomial_kernel(x, y, degree=degree)

    vals = torch.stack(
        [
            mmd2_unbiased(
                a[torch.randperm(a.shape[0], generator=g)[:m]],
                b[torch.randperm(b.shape[0], generator=g)[:m]],
                kern,
            )
            for _ in range(subsets)
        ]
    )
    return {
        "kid_mean": float(vals.mean()),
        "kid_std": float(vals.std(unbiased=False)),
        "subset_size": int(m),
        "subsets": int(subsets),
    }


# --------------------------------------------------------------------------- segmenter features
def _pool(t: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B, C) mean over the spatial dims; (B, C) stays."""
    return t.float().flatten(2).mean(dim=2) if t.ndim > 2 else t.float().reshape(t.shape[0], -1)


@torch.no_grad()
def segmenter_features(
    model: nn.Module,
    images: ImageSet,
    layer: str | nn.Module | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Global-average-pooled features of a segmenter, ``(N, F)`` float32 on the CPU.

    ``layer=None`` (default; works for any model returning logits ``(B, K, h, w)``): the
    concatenation ``[mean_hw logits, mean_hw softmax(logits)]`` (``F = 2K``): the spatially
    pooled logits (confidence / appearance) and the predicted class histogram (the scene's
    class composition). With ``layer`` (a submodule or its name in ``named_modules()``), the
    spatial mean of that module's output instead (e.g. the decoder's last feature map).

    ``images``: a tensor in ``[-1, 1]`` (split into ``batch_size`` chunks if given) or an
    iterable of batches; they are moved to ``device`` (default: the model's). The model is put
    in eval mode for the call and its train/eval flags restored after.

    KID is not invariant to the feature scale (the kernel is ``(x.y/d + 1)^3``): a trained
    segmenter's logits give far larger values than a random one's, so only compare KIDs
    computed with the same feature network.
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    if isinstance(images, Tensor) and batch_size:
        images = images.split(batch_size)
    hooked: list[Tensor] = []
    handle = None
    if layer is not None:
        modules = dict(model.named_modules())
        if isinstance(layer, str):
            if layer not in modules:
                raise KeyError(f"no submodule named {layer!r}; see model.named_modules()")
            layer = modules[layer]
        handle = layer.register_forward_hook(lambda _m, _i, o: hooked.append(output_logits(o)))
    feats = []
    try:
        with eval_mode(model):
            for x in _batches(images, "segmenter_features images"):
                hooked.clear()
                logits = output_logits(model(x.to(device)))
                if layer is not None:
                    if not hooked:
                        raise RuntimeError("the chosen layer was not called in the forward pass")
                    feats.append(_pool(hooked[-1]).cpu())
                else:
                    if logits.ndim != 4:
                        raise ValueError(f"expected logits (B, K, h, w), got {tuple(logits.shape)}")
                    prob = logits.float().softmax(dim=1)
                    feats.append(torch.cat([_pool(logits), _pool(prob)], dim=1).cpu())
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(feats)


# --------------------------------------------------------------------------- the main entry
def image_set_distance(
    a: ImageSet,
    b: ImageSet,
    *,
    seed: int = 0,
    patch_size: int = 7,
    levels: int = 2,
    patches_per_image: int = 64,
    max_patches: int | None = 65536,
    n_directions: int = 512,
    pyramid: Pyramid = "laplacian",
    normalize: Normalize = "reference",
    patch_mean: bool = False,
    scale: float = 1e3,
    features: Callable[[Tensor], Tensor] | None = None,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
    check_range: bool = True,
) -> dict[str, Any]:
    """Distance between image set ``a`` and the reference set ``b`` (e.g. target val).

    Each set is a tensor ``(N, C, H, W)`` in ``[-1, 1]`` or an iterable of such batches, read
    once. Returns::

        {"swd": mean over levels, "swd_per_level": [SWD_0, ...], "patches_per_level": M,
         "n_images": [N_a, N_b], "settings": {...},
         "kid_mean", "kid_std"  # only with ``features``}

    SWD (x ``scale``, default 1e3 as PGGAN) is described in the module docstring; the defaults
    (7x7 patches, 2 Laplacian levels = full and 1/2 resolution, 64 patches per image, 512
    directions) suit 64x128 images and work unchanged at 256x512 (use ``levels=3`` or ``4``
    there to reach coarser scales). ``features``, a callable mapping a batch to ``(B, F)``
    features (e.g. ``lambda x: segmenter_features(oracle, x)``), adds KID on those features.
    """
    if patch_size < 1 or levels < 1 or n_directions < 1:
        raise ValueError("patch_size, levels and n_directions must be positive")
    if max_patches is not None and max_patches < 1:
        raise ValueError(f"max_patches must be positive or None, got {max_patches}")
    common = dict(
        seed=seed,
        patch_size=patch_size,
        levels=levels,
        patches_per_image=patches_per_image,
        pyramid=pyramid,
        check_range=check_range,
        features=features,
    )
    da, na, fa = _collect(a, "set a", _STREAM_PATCHES_A, **common)
    db, nb, fb = _collect(b, "set b", _STREAM_PATCHES_B, **common)
    if da[0].shape[1] != db[0].shape[1]:
        raise ValueError(
            f"channel counts differ: set a has {da[0].shape[1]}, set b {db[0].shape[1]}"
        )
    per_level = []
    m = 0
    for lvl in range(levels):
        xa, xb = _equal_counts(da[lvl], db[lvl], max_patches, _generator(seed, _STREAM_SUBSET, lvl))
        m = xa.shape[0]
        xa, xb = normalize_descriptors(xa, xb, normalize, patch_mean)
        dirs = random_directions(
            xa.shape[1], n_directions, _generator(seed, _STREAM_DIRECTIONS, lvl)
        )
        per_level.append(scale * float(sliced_wasserstein(xa, xb, directions=dirs).mean()))
    out: dict[str, Any] = {
        "swd": float(np.mean(per_level)),
        "swd_per_level": per_level,
        "patches_per_level": m,
        "n_images": [na, nb],
        "settings": {
            "seed": seed,
            "patch_size": patch_size,
            "levels": levels,
            "patches_per_image": patches_per_image,
            "max_patches": max_patches,
            "n_directions": n_directions,
            "pyramid": pyramid,
            "normalize": normalize,
            "patch_mean": patch_mean,
            "scale": scale,
        },
    }
    if features is not None:
        assert fa is not None and fb is not None
        out.update(kid(fa, fb, kid_subsets, kid_subset_size, seed=seed))
    return out
