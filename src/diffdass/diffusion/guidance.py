"""Semantic Gradient Guidance (paper Sec. 4.2): GSG, LCG and their SGG arrangements.

A guidance is a guided-diffusion-style ``cond_fn`` hook: ``guidance(x_t, t, step, variance)``
returns a **mean shift** that the sampler adds to ``mu_theta(x_t, t)`` (Eq. 7):

    mu_hat = mu - scale * Sigma * grad_{x_t} L(g(x_t), y),   Sigma = beta_t (``variance``)

Sign. The paper's Eq. 7 prints ``+ lambda Sigma grad L``; with L a cross-entropy that would push
the sample *away* from its label. Classifier guidance (Dhariwal & Nichol) adds
``Sigma grad log p(y | x_t)``, i.e. *subtracts* the cross-entropy gradient, and that is what is
implemented here (``docs/translation.md``; ``tests/test_diffusion.py`` proves a guided step lowers the
cross-entropy).

Strength unit (the default). ``reduction="sum"``: the loss of an image is the **sum** of its pixel
cross-entropies, ``L = sum_p ce_p = -log p(y | x_t)`` for a label map whose pixels are
independent given the image, so the shift is guided-diffusion's classifier guidance,
``scale * Sigma * grad_{x_t} log p(y | x_t)``, and ``scale`` is its classifier scale. The pull on a
pixel is ``scale * Sigma * sum_q d ce_q / d x_p``: it does not depend on the number of pixels (the
same scene at 64x128 and at 256x512 gets the same per-pixel shift; ``tests/test_guidance_options.py``)
nor on the batch (every image gets the gradient it would get alone), and it fades where the
segmenter already agrees with the label (``d ce / d logits`` -> 0). One value of ``scale`` therefore
means the same thing at any resolution and batch size; the value itself depends on the segmenter
and the domain pair, and ``diffdass calibrate-guidance`` chooses it without target labels
(``docs/translation.md``).

The other reductions are kept as options. Write ``V_b`` for the labelled (non-ignored) pixels of
image ``b`` and ``m_c`` for class region ``c``; the loss is ``sum_p w_p ce_p`` per image:

============== ====================== ====================== =================================
reduction      GSG weight ``w_p``     LCG weight ``w_p``     note
============== ====================== ====================== =================================
``sum``        ``1``                  ``1``                  default: classifier-guidance
                                                             units, resolution-free
``image_mean`` ``1/|V_b|``            ``1/|V_b|``            the pull falls as ``1/|V_b|`` (16x
                                                             weaker at 256x512 than at 64x128)
``mean``       ``1/|V_b|``            ``1/|m_c|``            the paper's Eq. 6/10 read
                                                             literally (torch's mean CE per
                                                             region; lambda = 80): a 1-pixel
                                                             region weighs ``|V_b|`` times a
                                                             GSG pixel
============== ====================== ====================== =================================

Bound. ``|d ce_p / d logits_p|_2 <= sqrt(2)`` (softmax minus one-hot), so with a segmenter whose
input-to-logit Jacobian has operator norm ``J`` the shift of one image is bounded in L2 by
``scale * Sigma * sqrt(2) * J * sum_p w_p``: ``scale * Sigma * sqrt(2) * J * |V_b|`` for ``sum``
(a per-pixel rms bound ``scale * Sigma * sqrt(2) * J'`` with ``J'`` the per-pixel Jacobian norm),
``scale * Sigma * sqrt(2) * J`` for ``image_mean`` and ``scale * Sigma * sqrt(2) * J * K`` for the
literal ``mean`` of LCG with ``K`` regions (the shift concentrates on small regions).

Smoothing (``smooth``, off by default). The gradient of a segmenter w.r.t. its input is
dominated by high spatial frequencies that fool that segmenter and no other (an adversarial
perturbation), and they are what raises the patch distance to the target first. ``smooth = s``
convolves every shift with a Gaussian of standard deviation ``s * H`` pixels (``H``: the image
height, so one value means the same at any resolution), as translation-invariant attacks do to
make perturbations transfer (a constant shift is left unchanged).

Gradients are taken w.r.t. the noisy input ``x_t`` only, through the segmenter only (never the
UNet), with ``torch.autograd.grad`` on the input, so the segmenter's parameters never accumulate
``.grad``. During the call the segmenter is switched to eval mode (BatchNorm uses running
statistics, so the items of a batch are independent; Dropout is off) and each submodule's
``training`` flag is restored afterwards. The logits are upsampled bilinearly
(``align_corners=False``) to the label size when smaller. With ``amp_dtype`` (e.g.
``torch.bfloat16``; the caller decides per device, e.g. only on CUDA), the segmenter forward
runs under autocast on the inputs' device; the loss and the returned gradient are float32.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from diffdass.utils.modules import eval_mode, output_logits

__all__ = [
    "DEFAULT_SCALE",
    "GSG",
    "LCG",
    "SGG",
    "GuidanceFn",
    "build_guidance",
    "eval_mode",
    "per_image_ce",
    "segmenter_logits",
    "smooth_shift",
]

IGNORE_INDEX = 255
Reduction = Literal["image_mean", "mean", "sum"]
REDUCTIONS = ("sum", "image_mean", "mean")
#: the classifier scale used when none is given (reduction ``sum``, input ``x0``, smoothing
#: 0.025): the value ``diffdass calibrate-guidance`` chose on the built-in benchmark (seeds 0
#: and 2; 0.08 on seed 1; docs/translation.md)
DEFAULT_SCALE = 0.113


class GuidanceFn(Protocol):
    """``(x_t, t, step, variance) -> mean shift`` (same shape as ``x_t``)."""

    def __call__(self, x_t: Tensor, t: int, step: int, variance: float) -> Tensor: ...


# ---------------------------------------------------------------------------- helpers
def segmenter_logits(segmenter: nn.Module, x: Tensor) -> Tensor:
    """Logits of a segmenter that may return a tensor, a tuple/list (first item), a dict
    (``"out"`` or its first value) or an object with ``.logits``."""
    return output_logits(segmenter(x))


def _autocast(x: Tensor, amp_dtype: torch.dtype | None, force_fp32: bool = False):
    kind = x.device.type
    if force_fp32 and kind in ("cuda", "cpu"):  # even inside a caller's autocast region
        return torch.autocast(device_type=kind, enabled=False)
    if amp_dtype is not None and kind in ("cuda", "cpu"):
        return torch.autocast(device_type=kind, dtype=amp_dtype)
    return nullcontext()


def per_image_ce(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, reduction: Reduction = "mean"
) -> Tensor:
    """(B,) cross-entropy per image: mean (``mean``, ``image_mean``) or sum (``sum``) over its
    non-ignored pixels; 0 if none."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    total = ce.flatten(1).sum(1)
    if reduction == "sum":
        return total
    if reduction not in ("mean", "image_mean"):
        raise ValueError(f"unknown reduction {reduction!r}")
    valid = (labels != ignore_index).flatten(1).sum(1).clamp_min(1)
    return total / valid


def smooth_shift(shift: Tensor, smooth: float) -> Tensor:
    """``shift`` convolved with a Gaussian of std ``smooth * H`` pixels (reflected borders);
    ``smooth <= 0``, or a std under a tenth of a pixel, returns ``shift`` unchanged."""
    sigma = float(smooth) * shift.shape[-2]
    if sigma < 0.1:
        return shift
    # a kernel of +-3 std, kept below the image size (reflect padding needs pad < size)
    radius = min(math.ceil(3 * sigma), (min(shift.shape[-2:]) - 1) // 2)
    if radius < 1:
        return shift
    size = 2 * radius + 1
    return gaussian_blur(shift, kernel_size=[size, size], sigma=[sigma, sigma])


class _SegmenterGuidance(ABC):
    """Shared plumbing: labels, segmenter forward (autocast, upsampling), scale."""

    def __init__(
        self,
        segmenter: nn.Module,
        labels: Tensor,
        scale: float = DEFAULT_SCALE,
        ignore_index: int = IGNORE_INDEX,
        amp_dtype: torch.dtype | None = None,
        reduction: Reduction = "sum",
        smooth: float = 0.0,
    ) -> None:
        if labels.ndim != 3:
            raise ValueError(f"labels must be (B, H, W), got {tuple(labels.shape)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}: one of {REDUCTIONS}")
        self.segmenter = segmenter
        self.labels = labels.long()
        self.scale = float(scale)
        self.ignore_index = int(ignore_index)
        self.amp_dtype = amp_dtype
        self.reduction: Reduction = reduction
        if not smooth >= 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)

    def _labels_on(self, device: torch.device) -> Tensor:
        if self.labels.device != device:
            self.labels = self.labels.to(device)
        return self.labels

    def _logits(self, x: Tensor, size: tuple[int, int], amp: bool = True) -> Tensor:
        """Float32 logits at ``size``; ``amp=False`` forces a float32 forward."""
        with _autocast(x, self.amp_dtype, force_fp32=not amp):
            logits = segmenter_logits(self.segmenter, x)
        logits = logits.float()
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    @abstractmethod
    def gradient(self, x_t: Tensor) -> Tensor:
        """``grad_{x_t}`` of this guidance's loss (float32, the shape of ``x_t``)."""

    def __call__(self, x_t: Tensor, t: int, step: int, variance: float) -> Tensor:
        """Mean shift ``-scale * variance * grad`` (float32, shape of ``x_t``), smoothed when
        ``smooth > 0``."""
        return smooth_shift((-self.scale * float(variance)) * self.gradient(x_t), self.smooth)


# ---------------------------------------------------------------------------- GSG
class GSG(_SegmenterGuidance):
    """Global Scene-harmonious Guidance (Eq. 10): ``L = CE(g(x_t), y)`` over the whole image.

    ``shift = -scale * Sigma * grad_{x_t} L``.
    """

    def loss(self, x: Tensor) -> Tensor:
        """(B,) guidance loss at ``x`` (no grad; for monitoring and tests)."""
        y = self._labels_on(x.device)
        with torch.no_grad(), eval_mode(self.segmenter):
            return per_image_ce(
                self._logits(x.float(), y.shape[-2:]), y, self.ignore_index, self.reduction
            )

    def gradient(self, x_t: Tensor) -> Tensor:
        y = self._labels_on(x_t.device)
        if x_t.shape[0] != y.shape[0]:
            raise ValueError("batch size of x_t and labels differ")
        with torch.enable_grad(), eval_mode(self.segmenter):
            x = x_t.detach().float().requires_grad_(True)
            logits = self._logits(x, y.shape[-2:])
            loss = per_image_ce(logits, y, self.ignore_index, self.reduction).sum()
            (grad,) = torch.autograd.grad(loss, x)
        return grad


# ---------------------------------------------------------------------------- LCG
LCGMode = Literal["batched", "loop", "single_pass"]


class LCG(_SegmenterGuidance):
    """Local Class-regional Guidance (Eqs. 6-9) expressed as a per-pixel mean shift.

    For every class ``c`` present in image ``b``'s label (ignore excluded),
    ``L_c = CE(g(x_t * m_c), y restricted to m_c)`` and ``g_c = grad_{x_t} L_c``; the shift is
    ``-scale * Sigma * sum_c m_c * g_c``. Because the input is masked, ``g_c`` is zero outside
    ``m_c``; ignore pixels get no shift (they take the unguided sample, see ``sampler``).

    Modes (all return the same quantity up to float error, except ``single_pass``):

    - ``"batched"``: all (image, class) pairs are stacked into one batch of masked images and
      run forward/backward ``chunk_size`` items at a time. Summing the items' losses gives every
      item its own gradient because items are independent (segmenter in eval mode).
    - ``"loop"``: the naive reference, one masked image per forward/backward, always float32
      (no autocast). Used by the tests and the speed benchmark.
    - ``"single_pass"``: an approximation, *not* Eq. 6. One forward on the **unmasked** image,
      ``loss = sum_c mean_{p in m_c} CE_p`` (the same per-region normalisation), one backward, and
      the gradient multiplied by the union of the class masks. Differences from LCG: the segmenter
      sees the context of the other regions (no masking), so its predictions in ``m_c`` differ;
      and the gradient reaching a pixel of region ``c'`` also contains contributions of the losses
      of other regions ``c`` through the receptive field (``sum_c g_c`` is not separated per
      region). Only for a pixel-wise segmenter is it identical to LCG. It costs one
      forward/backward instead of one per class.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        labels: Tensor,
        scale: float = DEFAULT_SCALE,
        chunk_size: int = 8,
        mode: LCGMode = "batched",
        ignore_index: int = IGNORE_INDEX,
        amp_dtype: torch.dtype | None = None,
        reduction: Reduction = "sum",
        smooth: float = 0.0,
    ) -> None:
        super().__init__(segmenter, labels, scale, ignore_index, amp_dtype, reduction, smooth)
        if mode not in ("batched", "loop", "single_pass"):
            raise ValueError(f"unknown LCG mode {mode!r}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.mode: LCGMode = mode
        self.chunk_size = int(chunk_size)
        item_b, item_c = [], []
        for b in range(self.labels.shape[0]):
            classes = torch.unique(self.labels[b])
            classes = classes[classes != self.ignore_index]
            item_b += [b] * len(classes)
            item_c += classes.tolist()
        self.item_b = torch.tensor(item_b, dtype=torch.long)
        self.item_c = torch.tensor(item_c, dtype=torch.long)

    @property
    def num_items(self) -> int:
        """Number of (image, class) pairs, i.e. masked forward passes of the loop mode."""
        return len(self.item_b)

    def _items(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.item_b.device != device:
            self.item_b, self.item_c = self.item_b.to(device), self.item_c.to(device)
        return self.item_b, self.item_c

    def _check(self, x_t: Tensor) -> Tensor:
        y = self._labels_on(x_t.device)
        if x_t.shape[0] != y.shape[0] or tuple(x_t.shape[-2:]) != tuple(y.shape[-2:]):
            raise ValueError(
                f"LCG needs labels of the image size: x_t {tuple(x_t.shape)}, y {tuple(y.shape)}"
            )
        return y

    def _item_losses(self, logits: Tensor, tgt: Tensor, b: Tensor, y: Tensor) -> Tensor:
        """(n,) loss ``L_c`` of items (b, c) from their logits and restricted targets.

        ``mean`` (the paper's Eq. 6 read literally): the mean over the region, a pixel weighs
        ``1/|m_c|``. ``image_mean`` (bounded): the region's summed cross-entropy divided by the
        image's labelled pixel count, a pixel weighs ``1/|valid(b)|`` as in GSG. ``sum``: 1.
        """
        if self.reduction == "image_mean":
            total = per_image_ce(logits, tgt, self.ignore_index, "sum")
            valid = (y != self.ignore_index).flatten(1).sum(1).clamp_min(1).float()
            return total / valid[b]
        return per_image_ce(logits, tgt, self.ignore_index, self.reduction)

    def _region_items(self, y: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Masks (n,1,H,W) bool and restricted targets (n,H,W) for items (b, c)."""
        yb = y[b]
        m = yb == c.view(-1, 1, 1)
        tgt = torch.where(m, yb, torch.full_like(yb, self.ignore_index))
        return m.unsqueeze(1), tgt

    # -- the three implementations -------------------------------------------------------
    def _gradient_batched(self, x_t: Tensor, y: Tensor) -> Tensor:
        item_b, item_c = self._items(x_t.device)
        x = x_t.detach().float().requires_grad_(True)
        total = torch.zeros_like(x)
        for s in range(0, self.num_items, self.chunk_size):
            b, c = item_b[s : s + self.chunk_size], item_c[s : s + self.chunk_size]
            m, tgt = self._region_items(y, b, c)
            inp = x[b] * m.to(x.dtype)
            logits = self._logits(inp, y.shape[-2:])
            loss = self._item_losses(logits, tgt, b, y).sum()
            (g,) = torch.autograd.grad(loss, x)
            total += g
        return total

    def class_gradients(self, x_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reference per-class gradients: ``(item_b, item_c, grads)`` with ``grads[i] =
        grad_{x_t[b_i]} L_{c_i}`` of shape (n_items, C, H, W), one float32 pass per item."""
        y = self._check(x_t)
        item_b, item_c = self._items(x_t.device)
        grads = x_t.new_zeros((self.num_items, *x_t.shape[1:]), dtype=torch.float32)
        with torch.enable_grad(), eval_mode(self.segmenter):
            for i in range(self.num_items):
                b, c = item_b[i : i + 1], item_c[i : i + 1]
                m, tgt = self._region_items(y, b, c)
                xb = x_t[b].detach().float().requires_grad_(True)
                logits = self._logits(xb * m.float(), y.shape[-2:], amp=False)
                loss = self._item_losses(logits, tgt, b, y).sum()
                (grads[i : i + 1],) = torch.autograd.grad(loss, xb)
        return item_b, item_c, grads

    def _gradient_loop(self, x_t: Tensor) -> Tensor:
        item_b, item_c, grads = self.class_gradients(x_t)
        m, _ = self._region_items(self.labels, item_b, item_c)
        total = torch.zeros_like(x_t, dtype=torch.float32)
        return total.index_add_(0, item_b, grads * m.float())

    def _single_pass_weights(self, y: Tensor) -> Tensor:
        """(B,H,W) weight 1/|m_c| (mean), 1/|valid| (image_mean) or 1 (sum) at each valid
        pixel, 0 on ignore."""
        valid = y != self.ignore_index
        if self.reduction == "sum":
            return valid.float()
        if self.reduction == "image_mean":
            n = valid.flatten(1).sum(1).clamp_min(1).float()
            return valid.float() / n.view(-1, 1, 1)
        flat = torch.where(valid, y, torch.zeros_like(y)).flatten(1)
        n_cls = int(flat.max()) + 1 if flat.numel() else 1
        counts = torch.zeros(y.shape[0], n_cls, device=y.device, dtype=torch.float32)
        counts.scatter_add_(1, flat, valid.flatten(1).float())
        w = 1.0 / torch.gather(counts, 1, flat).clamp_min(1.0)
        return (w * valid.flatten(1)).view_as(y)

    def _gradient_single_pass(self, x_t: Tensor, y: Tensor) -> Tensor:
        x = x_t.detach().float().requires_grad_(True)
        logits = self._logits(x, y.shape[-2:])
        ce = F.cross_entropy(logits, y, ignore_index=self.ignore_index, reduction="none")
        loss = (ce * self._single_pass_weights(y)).sum()
        (g,) = torch.autograd.grad(loss, x)
        return g * (y != self.ignore_index).unsqueeze(1).to(g.dtype)

    def gradient(self, x_t: Tensor) -> Tensor:
        """``sum_c m_c * grad_{x_t} L_c`` (float32, zero on ignore pixels)."""
        y = self._check(x_t)
        if self.mode == "loop":
            return self._gradient_loop(x_t)
        with torch.enable_grad(), eval_mode(self.segmenter):
            if self.mode == "batched":
                return self._gradient_batched(x_t, y)
            return self._gradient_single_pass(x_t, y)

    def loss(self, x: Tensor) -> Tensor:
        """(B,) LCG objective ``sum_c L_c`` per image at ``x`` (loop form, no grad)."""
        y = self._check(x)
        item_b, item_c = self._items(x.device)
        out = torch.zeros(x.shape[0], device=x.device)
        with torch.no_grad(), eval_mode(self.segmenter):
            for i in range(self.num_items):
                b, c = item_b[i : i + 1], item_c[i : i + 1]
                m, tgt = self._region_items(y, b, c)
                logits = self._logits(x[b].float() * m.float(), y.shape[-2:], amp=False)
                out[b] += self._item_losses(logits, tgt, b, y)
        return out


# ---------------------------------------------------------------------------- SGG
Arrangement = Literal["alternate", "lcg_then_gsg", "gsg_then_lcg", "random"]


class SGG:
    """Semantic Gradient Guidance: LCG or GSG at each reverse step (paper Sec. 4.2).

    The sequence is indexed by reverse-step position (0 = the first reverse step, paper's
    ``k = n``). With ``n`` steps there are ``ceil(n/2)`` LCG and ``floor(n/2)`` GSG steps:

    - ``"alternate"``: L, G, L, G, ... (LCG at ``k in {n, n-2, ...}``, as in the paper);
    - ``"lcg_then_gsg"``: ``ceil(n/2)`` L then the G's; ``"gsg_then_lcg"``: the G's then the L's;
    - ``"random"``: the same multiset, permuted by ``torch.randperm`` with a generator seeded with
      ``seed``. The sequence depends only on ``(seed, n)``: it is the same for every translation.

    The sampler calls :meth:`begin` with ``n`` before the first step; used directly, a step
    number not below the previous one also starts a new sequence of length ``step``.
    ``trace`` lists the kinds used since the last ``begin``.
    """

    def __init__(
        self,
        lcg: GuidanceFn,
        gsg: GuidanceFn,
        arrangement: Arrangement = "alternate",
        seed: int = 0,
    ) -> None:
        if arrangement not in ("alternate", "lcg_then_gsg", "gsg_then_lcg", "random"):
            raise ValueError(f"unknown arrangement {arrangement!r}")
        self.lcg, self.gsg = lcg, gsg
        self.arrangement: Arrangement = arrangement
        self.seed = int(seed)
        self._seq: list[str] | None = None
        self._n = 0
        self._last_step: int | None = None
        self.trace: list[str] = []

    def sequence(self, n: int) -> list[str]:
        """Kinds (``"lcg"``/``"gsg"``) of the ``n`` reverse steps, in the order they run."""
        n_lcg = math.ceil(n / 2)
        n_gsg = n - n_lcg
        if self.arrangement == "alternate":
            return ["lcg" if i % 2 == 0 else "gsg" for i in range(n)]
        if self.arrangement == "lcg_then_gsg":
            return ["lcg"] * n_lcg + ["gsg"] * n_gsg
        if self.arrangement == "gsg_then_lcg":
            return ["gsg"] * n_gsg + ["lcg"] * n_lcg
        base = ["lcg"] * n_lcg + ["gsg"] * n_gsg
        g = torch.Generator().manual_seed(self.seed)
        return [base[i] for i in torch.randperm(n, generator=g).tolist()]

    def begin(self, n: int) -> None:
        self._seq = self.sequence(n)
        self._n = n
        self._last_step = None
        self.trace = []

    def __call__(self, x_t: Tensor, t: int, step: int, variance: float) -> Tensor:
        if self._seq is None or (self._last_step is not None and step >= self._last_step):
            self.begin(step)
        assert self._seq is not None
        pos = self._n - step
        if not 0 <= pos < self._n:
            raise ValueError(f"step {step} outside 1..{self._n}")
        self._last_step = step
        kind = self._seq[pos]
        self.trace.append(kind)
        fn = self.lcg if kind == "lcg" else self.gsg
        return fn(x_t, t, step, variance)


# ---------------------------------------------------------------------------- factory
def build_guidance(
    kind: Literal["none", "gsg", "lcg", "sgg"],
    segmenter: nn.Module | None,
    labels: Tensor | None,
    scale: float = DEFAULT_SCALE,
    arrangement: Arrangement = "alternate",
    lcg_mode: LCGMode = "batched",
    chunk_size: int = 8,
    seed: int = 0,
    amp_dtype: torch.dtype | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: Reduction = "sum",
    smooth: float = 0.0,
) -> GuidanceFn | None:
    """Guidance for one batch of labels: ``None`` (baseline), GSG-only, LCG-only or SGG.
    ``smooth``: Gaussian std of the shift as a fraction of the image height (0: off)."""
    if kind == "none":
        return None
    if segmenter is None or labels is None:
        raise ValueError(f"guidance {kind!r} needs a segmenter and labels")
    common: dict[str, Any] = dict(
        scale=scale,
        ignore_index=ignore_index,
        amp_dtype=amp_dtype,
        reduction=reduction,
        smooth=smooth,
    )
    if kind == "gsg":
        return GSG(segmenter, labels, **common)
    lcg = LCG(segmenter, labels, chunk_size=chunk_size, mode=lcg_mode, **common)
    if kind == "lcg":
        return lcg
    if kind == "sgg":
        return SGG(lcg, GSG(segmenter, labels, **common), arrangement=arrangement, seed=seed)
    raise ValueError(f"unknown guidance kind {kind!r}")
